//! The invariants of DESIGN.md, checked from etcd's own contents (tests and benchmarks use this).
//!
//! 1. No engine's reservations exceed its capacity (times the overcommit factor), and no host
//!    port is reserved twice on one engine.
//! 2. A placed request has exactly one reservation, on the engine its decision names, and every
//!    reservation belongs to a placed decision.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::Client;

use crate::keys::{Key, Keys};
use crate::model::{Decision, EngineSpec, HostPort, MemoryMb, Millicpus, Reservation, Status};
use crate::store::{self, StoreError};

/// What the check found. Empty lists everywhere mean the invariants hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub requests: usize,
    pub decided: usize,
    pub placed: usize,
    pub unschedulable: usize,
    pub invalid: usize,
    /// Waiting to be placed again after a failed launch or a lost engine.
    pub pending: usize,
    /// Containers that failed to start, exited (batch) or were lost with their engine.
    pub ended: usize,
    /// `engine: reserved/capacity` for each engine over capacity.
    pub overcommitted_engines: Vec<String>,
    /// `engine port` for each host port reserved more than once.
    pub double_bound_ports: Vec<String>,
    /// Placed decisions without exactly one matching reservation, and reservations without a
    /// placed decision.
    pub mismatched: Vec<String>,
}

impl Report {
    pub fn violations(&self) -> usize {
        self.overcommitted_engines.len() + self.double_bound_ports.len() + self.mismatched.len()
    }
}

/// Reads everything under the prefix at one revision and checks it.
pub async fn check_etcd(
    client: &Client,
    keys: &Keys,
    overcommit: f64,
) -> Result<Report, StoreError> {
    let (kvs, _) = store::range_all(client, keys.root(), 5_000).await?;
    Ok(check(
        keys,
        kvs.iter().map(|kv| (kv.key(), kv.value())),
        overcommit,
    ))
}

/// Checks a set of `(key, value)` pairs as read from etcd at one revision.
pub fn check<'a>(
    keys: &Keys,
    kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    overcommit: f64,
) -> Report {
    let mut report = Report::default();
    let mut engines = BTreeMap::new();
    let mut decisions = BTreeMap::new();
    let mut reservations: BTreeMap<String, Vec<(String, Reservation)>> = BTreeMap::new();
    for (key, value) in kvs {
        match keys.parse(key) {
            Some(Key::Engine(id)) => {
                if let Ok(spec) = EngineSpec::parse(&id, value) {
                    engines.insert(id.to_string(), spec);
                }
            }
            Some(Key::Request(_)) => report.requests += 1,
            Some(Key::Decision(id)) => {
                if let Ok(d) = serde_json::from_slice::<Decision>(value) {
                    decisions.insert(id.to_string(), d);
                }
            }
            Some(Key::Reservation(engine, id)) => {
                if let Ok(r) = serde_json::from_slice::<Reservation>(value) {
                    reservations
                        .entry(id.to_string())
                        .or_default()
                        .push((engine.to_string(), r));
                } else {
                    report
                        .mismatched
                        .push(format!("reservation {engine}/{id} is unreadable"));
                }
            }
            _ => {}
        }
    }
    report.decided = decisions.len();
    for (id, d) in &decisions {
        match d.status {
            Status::Placed => {
                report.placed += 1;
                let engine = d.resource.as_ref().map(|r| r.id.as_str()).unwrap_or("");
                match reservations.get(id).map(Vec::as_slice) {
                    Some([(e, _)]) if e == engine => {}
                    Some(list) => report.mismatched.push(format!(
                        "{id}: placed on {engine:?} but reserved on {:?}",
                        list.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>()
                    )),
                    None => report
                        .mismatched
                        .push(format!("{id}: placed on {engine:?} without a reservation")),
                }
            }
            Status::Unschedulable => report.unschedulable += 1,
            Status::Invalid => report.invalid += 1,
            Status::Pending => report.pending += 1,
            Status::Failed | Status::Exited | Status::Lost => report.ended += 1,
        }
    }
    let mut used: BTreeMap<&str, (Millicpus, MemoryMb, BTreeMap<HostPort, usize>)> =
        BTreeMap::new();
    for (id, list) in &reservations {
        if decisions.get(id).map(|d| d.status) != Some(Status::Placed) {
            report
                .mismatched
                .push(format!("{id}: reserved without a placed decision"));
        }
        for (engine, r) in list {
            let held = r.held();
            let u = used.entry(engine.as_str()).or_default();
            u.0.0 += held.cpus.0;
            u.1.0 += held.memory.0;
            for p in held.ports {
                *u.2.entry(p).or_default() += 1;
            }
        }
    }
    for (engine, (cpus, memory, ports)) in &used {
        if let Some(spec) = engines.get(*engine) {
            let cap_c = (spec.cpus.0 as f64 * overcommit).floor() as u64;
            let cap_m = (spec.memory.0 as f64 * overcommit).floor() as u64;
            if cpus.0 > cap_c || memory.0 > cap_m {
                report.overcommitted_engines.push(format!(
                    "{engine}: {}/{} cpus, {}/{} MB",
                    cpus.as_cpus(),
                    cap_c as f64 / 1000.0,
                    memory.0,
                    cap_m
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
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pairs: &[(&str, &str)]) -> Report {
        check(
            &Keys::default(),
            pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
            1.0,
        )
    }

    const ENGINE: (&str, &str) = ("/citadel/engines/e1", r#"{"cpus":1,"memory":1000}"#);

    fn placed(id: &str) -> (String, String) {
        (
            format!("/citadel/decisions/{id}"),
            r#"{"container":{},"resource":{"id":"e1","addr":"","total_cpus":1,"total_memory":1000},"status":"placed","request_revision":1,"decided_at":"","decided_by":""}"#
                .to_string(),
        )
    }

    fn reservation(id: &str, cpus: f64, port: u16) -> (String, String) {
        (
            format!("/citadel/reservations/e1/{id}"),
            format!(
                r#"{{"request":"{id}","engine":"e1","cpus":{cpus},"memory":100,"ports":[{{"proto":"tcp","port":{port}}}],"request_revision":1}}"#
            ),
        )
    }

    #[test]
    fn a_consistent_state_passes() {
        let (d1, r1) = (placed("a"), reservation("a", 0.5, 80));
        let (d2, r2) = (placed("b"), reservation("b", 0.5, 81));
        let report = run(&[
            ENGINE,
            (&d1.0, &d1.1),
            (&r1.0, &r1.1),
            (&d2.0, &d2.1),
            (&r2.0, &r2.1),
        ]);
        assert_eq!(report.violations(), 0, "{report:?}");
        assert_eq!(report.placed, 2);
    }

    #[test]
    fn a_planted_overcommit_and_double_port_are_caught() {
        let (d1, r1) = (placed("a"), reservation("a", 0.6, 80));
        let (d2, r2) = (placed("b"), reservation("b", 0.6, 80));
        let report = run(&[
            ENGINE,
            (&d1.0, &d1.1),
            (&r1.0, &r1.1),
            (&d2.0, &d2.1),
            (&r2.0, &r2.1),
        ]);
        assert_eq!(report.overcommitted_engines.len(), 1, "{report:?}");
        assert_eq!(report.double_bound_ports, vec!["e1 80/tcp".to_string()]);
    }

    #[test]
    fn placements_and_reservations_must_pair_up() {
        let d1 = placed("a");
        let r2 = reservation("b", 0.1, 80);
        let report = run(&[ENGINE, (&d1.0, &d1.1), (&r2.0, &r2.1)]);
        assert_eq!(report.mismatched.len(), 2, "{report:?}");
    }
}
