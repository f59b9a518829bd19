//! What the mirror reads of a decision's value: the fields it keeps, without building the
//! echoed request. Every standby reads every decision, so this is on every replica's hot path.

use serde::de::IgnoredAny;

use crate::model::{Decision, Reservation, Run, Status};
use crate::scheduler::Strategy;

/// What the mirror keeps of a decision, however it learnt of it (its value, or the leader's
/// own commit).
pub(super) struct DecisionFacts<'a> {
    pub(super) status: Status,
    pub(super) reason: String,
    pub(super) request_revision: i64,
    pub(super) engine: Option<String>,
    pub(super) scheduler: Option<Strategy>,
    pub(super) reservation: Option<&'a Reservation>,
    pub(super) run: Option<Box<Run>>,
    pub(super) preempted: Option<Box<[String]>>,
}

impl<'a> DecisionFacts<'a> {
    pub(super) fn of(d: &'a Decision) -> Self {
        DecisionFacts {
            status: d.status,
            reason: d.reason.clone(),
            request_revision: d.request_revision,
            engine: d.resource.as_ref().map(|r| r.id.clone()),
            scheduler: d.scheduler.parse().ok(),
            reservation: d.reservation.as_ref(),
            run: d.run.clone().map(Box::new),
            preempted: (!d.preempted.is_empty()).then(|| d.preempted.clone().into()),
        }
    }

    /// A value nobody can read (written by hand?): the request is decided anew over it.
    pub(super) fn unreadable() -> Self {
        DecisionFacts {
            status: Status::Invalid,
            reason: String::new(),
            request_revision: -1,
            engine: None,
            scheduler: None,
            reservation: None,
            run: None,
            preempted: None,
        }
    }
}

/// What the mirror reads of a decision: [`Decision`]'s required fields and those it keeps.
/// The echoed request (`container`) and the rest of `resource` are skipped, not built.
#[derive(serde::Deserialize)]
pub(super) struct DecisionHead {
    #[serde(rename = "container")]
    _container: IgnoredAny,
    #[serde(default)]
    resource: Option<ResourceId>,
    #[serde(default)]
    pub(super) reservation: Option<Reservation>,
    status: Status,
    #[serde(default)]
    reason: String,
    request_revision: i64,
    #[serde(default)]
    scheduler: String,
    #[serde(default)]
    run: Option<Run>,
    #[serde(default)]
    preempted: Vec<String>,
    #[serde(rename = "decided_at")]
    _decided_at: IgnoredAny,
    #[serde(rename = "decided_by")]
    _decided_by: IgnoredAny,
}

#[derive(serde::Deserialize)]
struct ResourceId {
    id: String,
    #[serde(rename = "addr")]
    _addr: IgnoredAny,
    #[serde(rename = "total_cpus")]
    _total_cpus: IgnoredAny,
    #[serde(rename = "total_memory")]
    _total_memory: IgnoredAny,
}

impl DecisionHead {
    /// The facts it holds; the reservation is borrowed from it.
    pub(super) fn facts(&mut self) -> DecisionFacts<'_> {
        DecisionFacts {
            status: self.status,
            reason: std::mem::take(&mut self.reason),
            request_revision: self.request_revision,
            engine: self.resource.take().map(|r| r.id),
            scheduler: self.scheduler.parse().ok(),
            reservation: self.reservation.as_ref(),
            run: self.run.take().map(Box::new),
            preempted: (!self.preempted.is_empty())
                .then(|| std::mem::take(&mut self.preempted).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Millicpus, Resource};

    pub(crate) fn decision() -> Decision {
        Decision {
            container: serde_json::json!({"image": "redis", "cpus": "0.2", "env": ["A=1"]}).into(),
            resource: Some(Resource {
                id: "e1".into(),
                addr: "tcp://e1:2375".into(),
                total_cpus: 4.0,
                total_memory: 4096.0,
            }),
            reservation: Some(Reservation {
                cpus: 0.2,
                memory: 512.0,
                disk: 0.0,
                image: String::new(),
                priority: 0,
                preemptible: true,
                group: String::new(),
                disruption_budget: None,
                ports: vec![],
            }),
            status: Status::Placed,
            reason: "spread chose e1".into(),
            scheduler: "spread".into(),
            alternatives: Vec::new(),
            request_revision: 42,
            decided_at: "2026-11-29T08:00:00Z".into(),
            decided_by: "r1".into(),
            run: None,
            preempted_by: String::new(),
            preempted: Vec::new(),
        }
    }

    #[test]
    fn the_head_reads_what_the_mirror_keeps_and_requires_what_a_decision_requires() {
        let bytes = serde_json::to_vec(&decision()).unwrap();
        let mut head: DecisionHead = serde_json::from_slice(&bytes).unwrap();
        let facts = head.facts();
        assert_eq!(facts.status, Status::Placed);
        assert_eq!(facts.reason, "spread chose e1");
        assert_eq!(facts.request_revision, 42);
        assert_eq!(facts.engine.as_deref(), Some("e1"));
        assert_eq!(facts.scheduler, Some(Strategy::Spread));
        assert_eq!(
            facts.reservation.map(|r| r.held().cpus),
            Some(Millicpus(200))
        );
        assert!(facts.run.is_none());

        // Whatever `Decision` cannot read, the head does not read either.
        let full: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        for field in [
            "container",
            "status",
            "request_revision",
            "decided_at",
            "decided_by",
        ] {
            let mut v = full.clone();
            v.as_object_mut().unwrap().remove(field);
            let b = serde_json::to_vec(&v).unwrap();
            assert!(serde_json::from_slice::<Decision>(&b).is_err(), "{field}");
            assert!(
                serde_json::from_slice::<DecisionHead>(&b).is_err(),
                "{field}"
            );
        }
        let mut v = full.clone();
        v["resource"].as_object_mut().unwrap().remove("addr");
        let b = serde_json::to_vec(&v).unwrap();
        assert!(serde_json::from_slice::<DecisionHead>(&b).is_err());
    }
}
