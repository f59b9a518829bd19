//! Registration: `engines/<id>` from what Docker says, keeping what the operator set.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde_json::{Map, Value};

use crate::docker::engine::Probe;
use crate::model::{AgentInfo, Engine, EngineSpec, now_rfc3339};
use crate::store;

use super::*;

/// Labels in order, each once: `a` first, then what `b` adds.
fn union(a: &[String], b: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(a.len() + b.len());
    for l in a.iter().chain(b) {
        let l = l.trim();
        if !l.is_empty() && !out.iter().any(|o| o == l) {
            out.push(l.to_string());
        }
    }
    out
}

impl Agent {
    /// The engine record as the agent registers it over `old` (the operator's, if any): its
    /// capacity from Docker unless overridden; labels the union of the operator's, `--label`s
    /// and the daemon's; cordon, drain, TLS and any field this release does not know kept;
    /// the address kept, else `agent://<host>`.
    pub(super) fn record(&self, old: Option<&[u8]>, probe: &Probe) -> Result<Vec<u8>, String> {
        let mut map: Map<String, Value> = match old {
            None => Map::new(),
            Some(raw) => match serde_json::from_slice(raw) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return Err("holds no JSON object; fix or delete it".into()),
                Err(e) => return Err(format!("malformed JSON ({e}); fix or delete it")),
            },
        };
        let known: Engine = serde_json::from_value(Value::Object(map.clone()))
            .map_err(|e| format!("{e}; fix or delete it"))?;
        let labels = union(&union(&known.labels, &self.cfg.labels), &probe.labels);
        let agent = AgentInfo {
            host: self.cfg.host.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            since: now_rfc3339(),
            policy: self.cfg.policy.clone(),
        };
        let num = |v: f64| serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number);
        map.insert("id".into(), Value::String(self.engine().to_string()));
        map.insert("cpus".into(), num(self.cfg.cpus.unwrap_or(probe.cpus)));
        map.insert(
            "memory".into(),
            num(self.cfg.memory.unwrap_or(probe.memory_mb)),
        );
        let disk = self.cfg.disk.unwrap_or(probe.disk_mb);
        if disk > 0.0 {
            map.insert("disk".into(), num(disk));
        }
        map.insert("labels".into(), serde_json::json!(labels));
        if known.addr.is_empty() {
            map.insert(
                "addr".into(),
                Value::String(format!("agent://{}", self.cfg.host)),
            );
        }
        map.insert(
            "agent".into(),
            serde_json::to_value(&agent).map_err(|e| e.to_string())?,
        );
        let out = serde_json::to_vec(&map).map_err(|e| e.to_string())?;
        // What the scheduler will read must pass its own checks.
        EngineSpec::parse(&self.cfg.engine, &out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Writes the engine record, comparing its mod revision (an operator's `cordon` between
    /// our read and our write is read again, not lost).
    pub(super) async fn register(&self, probe: &Probe) -> Result<(), AgentError> {
        let key = self.cfg.keys.engine(&self.cfg.engine);
        let bad = |why: String| AgentError::Record {
            engine: self.engine().to_string(),
            why,
        };
        for attempt in 1..=50u32 {
            let got = match store::timed(self.client.kv_client().get(key.as_str(), None)).await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "cannot read the engine record; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let kv = got.kvs().first();
            let value = self.record(kv.map(|kv| kv.value()), probe).map_err(bad)?;
            let guard = match kv {
                Some(kv) => {
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision())
                }
                None => Compare::version(key.as_str(), CompareOp::Equal, 0),
            };
            let txn =
                Txn::new()
                    .when(vec![guard])
                    .and_then(vec![TxnOp::put(key.as_str(), value, None)]);
            match store::timed(self.client.kv_client().txn(txn)).await {
                Ok(r) if r.succeeded() => {
                    tracing::info!(engine = %self.cfg.engine, "engine registered");
                    return Ok(());
                }
                Ok(_) => tracing::debug!(attempt, "the engine record changed meanwhile; again"),
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "cannot write the engine record; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        Err(bad(
            "kept changing under 50 registrations; is another writer looping?".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_united_in_order_once_each() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            union(&s(&["zone=a", "ssd"]), &s(&["ssd", " gpu=1 ", ""])),
            s(&["zone=a", "ssd", "gpu=1"])
        );
    }
}
