//! Tests only: a mirror and its listener fed key by key, as the watch feeds them, with the
//! writes a user and a leader make.

use etcd_client::proto::PbKeyValue;
use etcd_client::{EventType, KeyValue};

use super::listener::{Listener, NoListener, Shared};
use super::mirror::Mirror;
use crate::keys::Keys;
use crate::model::{Decision, EngineId, RequestId, Reservation, Resource, Status};

/// A key-value as etcd's watch delivers it, at `rev`, under `lease` (0: none).
fn kv(key: &str, value: &str, rev: i64, lease: i64) -> PbKeyValue {
    kv_bytes(key.as_bytes(), value.as_bytes(), rev, lease)
}

fn kv_bytes(key: &[u8], value: &[u8], rev: i64, lease: i64) -> PbKeyValue {
    PbKeyValue {
        key: key.to_vec(),
        value: value.to_vec(),
        create_revision: rev,
        mod_revision: rev,
        version: 1,
        lease,
    }
}

pub fn rid(s: &str) -> RequestId {
    RequestId::new(s).expect("a valid request id")
}

/// A mirror and its listener fed key by key, as the watch feeds them.
pub struct Fed<L = NoListener> {
    pub shared: Shared<L>,
    pub keys: Keys,
    pub rev: i64,
}

impl Fed<NoListener> {
    pub fn new() -> Self {
        Fed::with(NoListener)
    }
}

impl<L: Listener> Fed<L> {
    /// A mirror whose changes `listener` hears.
    pub fn with(listener: L) -> Self {
        Fed {
            shared: Shared::new(Mirror::new(1.0), listener),
            keys: Keys::default(),
            rev: 0,
        }
    }

    pub fn mirror(&self) -> &Mirror {
        self.shared.mirror()
    }

    fn apply(&mut self, event: EventType, pb: &PbKeyValue) -> i64 {
        let kv: &KeyValue = pb.into();
        self.shared.apply(&self.keys, event, kv, None);
        self.shared.reached(pb.mod_revision);
        pb.mod_revision
    }

    pub fn put_leased(&mut self, key: &str, value: &str, lease: i64) -> i64 {
        self.rev += 1;
        self.apply(EventType::Put, &kv(key, value, self.rev, lease))
    }

    pub fn put(&mut self, key: &str, value: &str) -> i64 {
        self.put_leased(key, value, 0)
    }

    /// A key that need not be text.
    pub fn put_bytes(&mut self, key: &[u8], value: &[u8]) -> i64 {
        self.rev += 1;
        self.apply(EventType::Put, &kv_bytes(key, value, self.rev, 0))
    }

    pub fn delete_bytes(&mut self, key: &[u8]) -> i64 {
        self.rev += 1;
        self.apply(EventType::Delete, &kv_bytes(key, b"", self.rev, 0))
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
                priority: 0,
                preemptible: true,
                group: String::new(),
                disruption_budget: None,
            }),
            status: Status::Placed,
            reason: format!("spread chose {engine}"),
            scheduler: "spread".into(),
            alternatives: Vec::new(),
            request_revision,
            decided_at: String::new(),
            decided_by: "me".into(),
            run: None,
            preempted_by: String::new(),
            preempted: Vec::new(),
        };
        self.rev += 1;
        let rev = self.rev;
        self.shared.committed(&rid(id), rev, Some(&d));
        let value = serde_json::to_string(&d).expect("a decision serialises");
        // The watch echoes it afterwards.
        self.apply(
            EventType::Put,
            &kv(&format!("/citadel/decisions/{id}"), &value, rev, 0),
        )
    }

    /// Deletes `id`'s decision as the leader does: applied as its commit returns, then echoed.
    pub fn release(&mut self, id: &str) -> i64 {
        self.rev += 1;
        let rev = self.rev;
        self.shared.committed(&rid(id), rev, None);
        self.apply(
            EventType::Delete,
            &kv(&format!("/citadel/decisions/{id}"), "", rev, 0),
        )
    }
}

/// An engine id, for tests.
pub fn eid(s: &str) -> EngineId {
    EngineId::new(s).expect("a valid engine id")
}
