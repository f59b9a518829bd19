//! Tests only: a cache state fed key by key, as its watch feeds it, with the writes a user and
//! a leader make.

use std::collections::HashSet;

use etcd_client::proto::PbKeyValue;
use etcd_client::{EventType, KeyValue};

use super::state::{State, Work};
use crate::keys::Keys;
use crate::model::{Decision, RequestId, Reservation, Resource, Status};

/// A key-value as etcd's watch delivers it, at `rev`, under `lease` (0: none).
fn kv(key: &str, value: &str, rev: i64, lease: i64) -> PbKeyValue {
    PbKeyValue {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        create_revision: rev,
        mod_revision: rev,
        version: 1,
        lease,
    }
}

fn rid(s: &str) -> RequestId {
    RequestId::new(s).expect("a valid request id")
}

/// A state fed key by key, as the watch feeds it.
pub struct Fed {
    pub state: State,
    pub keys: Keys,
    pub rev: i64,
}

impl Fed {
    pub fn new() -> Self {
        Fed {
            state: State::new(1.0),
            keys: Keys::default(),
            rev: 0,
        }
    }

    fn apply(&mut self, event: EventType, pb: &PbKeyValue) -> i64 {
        let kv: &KeyValue = pb.into();
        self.state.apply(&self.keys, event, kv, None);
        self.state.revision = pb.mod_revision;
        pb.mod_revision
    }

    pub fn put_leased(&mut self, key: &str, value: &str, lease: i64) -> i64 {
        self.rev += 1;
        self.apply(EventType::Put, &kv(key, value, self.rev, lease))
    }

    pub fn put(&mut self, key: &str, value: &str) -> i64 {
        self.put_leased(key, value, 0)
    }

    pub fn delete(&mut self, key: &str) -> i64 {
        self.rev += 1;
        self.apply(EventType::Delete, &kv(key, "", self.rev, 0))
    }

    pub fn engine(&mut self, id: &str, cpus: f64) {
        self.put(
            &format!("/citadel/engines/{id}"),
            &format!(r#"{{"addr":"tcp://{id}:2375","cpus":{cpus},"memory":4096}}"#),
        );
    }

    pub fn request(&mut self, id: &str, cpus: f64, kind: &str) -> i64 {
        self.put(
            &format!("/citadel/requests/{id}"),
            &format!(r#"{{"image":"x","cpus":{cpus},"memory":1,"type":"{kind}"}}"#),
        )
    }

    /// A decision without a placement, written by hand or by another leader.
    pub fn decide(&mut self, id: &str, status: &str, reason: &str, request_revision: i64) -> i64 {
        self.put(
            &format!("/citadel/decisions/{id}"),
            &serde_json::json!({
                "container": {}, "status": status, "reason": reason,
                "request_revision": request_revision,
                "decided_at": "", "decided_by": "",
            })
            .to_string(),
        )
    }

    /// A placement as a leader writes it, applied as the leader applies its own.
    pub fn place(&mut self, id: &str, engine: &str, cpus: f64, request_revision: i64) -> i64 {
        let d = Decision {
            container: serde_json::json!({}).into(),
            resource: Some(Resource {
                id: engine.into(),
                addr: String::new(),
                total_cpus: 4.0,
                total_memory: 4096.0,
            }),
            reservation: Some(Reservation {
                cpus,
                memory: 1.0,
                disk: 0.0,
                ports: vec![],
                image: String::new(),
            }),
            status: Status::Placed,
            reason: format!("spread chose {engine}"),
            scheduler: "spread".into(),
            alternatives: Vec::new(),
            request_revision,
            decided_at: String::new(),
            decided_by: "me".into(),
            run: None,
        };
        self.rev += 1;
        let rev = self.rev;
        self.state.decided(&rid(id), rev, &d);
        let value = serde_json::to_string(&d).expect("a decision serialises");
        // The watch echoes it afterwards.
        self.apply(
            EventType::Put,
            &kv(&format!("/citadel/decisions/{id}"), &value, rev, 0),
        )
    }

    pub fn work(&self) -> Vec<Work> {
        self.state.work(100, &HashSet::new())
    }
}
