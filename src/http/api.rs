//! `/api/state`: what the status page shows, as JSON, read from this replica's cache.
//!
//! Every list is bounded (engines, requests per status, recent decisions) and says how many
//! there are in all, so a page on a cluster of 200,000 requests stays a few hundred kilobytes.
//! Strings taken from etcd (ids, reasons, labels, addresses) go out as JSON strings; the page
//! puts them into the DOM as text, never as markup.

use std::time::SystemTime;

use serde::Serialize;

use super::Surface;
use crate::cache::{Mirror, Standing};
use crate::model::{EngineId, now_rfc3339};

/// Engines listed at most; the rest are counted (`engines_total`).
const MAX_ENGINES: usize = 2_000;
/// Requests listed per status at most.
const PER_STATUS: usize = 50;
/// Recent decisions listed.
const RECENT: usize = 30;

#[derive(Debug, Serialize)]
pub struct ApiState {
    /// When this was read (RFC 3339, UTC).
    pub generated_at: String,
    pub replica: ReplicaJson,
    /// The election's candidates, lowest create revision first; the leader has `leads`.
    pub candidates: Vec<CandidateJson>,
    pub cluster: ClusterJson,
    /// By id, at most 2,000.
    pub engines: Vec<EngineJson>,
    pub engines_total: usize,
    /// How many requests stand where, every status (zeros too), in the order of `requests`.
    pub request_counts: Vec<CountJson>,
    /// Requests by status, the statuses that need a look first (unschedulable, failed,
    /// invalid, lost, pending, queued, exited, placed), at most 50 each.
    pub requests: Vec<GroupJson>,
    /// The newest decisions (highest mod revision first).
    pub recent: Vec<DecisionJson>,
}

#[derive(Debug, Serialize)]
pub struct ReplicaJson {
    pub id: String,
    pub prefix: String,
    pub leads: bool,
    pub ready: bool,
    pub ready_reason: String,
    pub healthy: bool,
    pub health_reason: String,
    /// The revision the cache has applied.
    pub revision: i64,
    /// etcd's revision as last seen in a response header.
    pub etcd_revision: i64,
    pub lag: i64,
    /// When etcd last answered this replica (RFC 3339; `null`: never yet). While `healthy`
    /// is false, what the page shows is as of then.
    pub etcd_answered_at: Option<String>,
    /// Milliseconds since then, by this replica's clock.
    pub etcd_silent_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct CandidateJson {
    /// The replica's id (absent when the key's value is not a citadel candidate's).
    pub id: Option<String>,
    pub addr: String,
    /// Where it serves this page (IP:PORT), when it says (older replicas do not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Its build's version, when it says (older replicas do not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When it began campaigning (RFC 3339), as it wrote it.
    pub since: String,
    /// When it began leading (RFC 3339), as the leader writes it once it has won.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leads_since: Option<String>,
    pub key: String,
    /// The lease, in hex as `etcdctl lease` prints it ("0": none).
    pub lease: String,
    pub create_revision: i64,
    pub leads: bool,
}

#[derive(Debug, Serialize)]
pub struct ClusterJson {
    pub engines: usize,
    pub cpus: f64,
    pub reserved_cpus: f64,
    pub memory_mb: f64,
    pub reserved_memory_mb: f64,
    /// Decisions holding a reservation.
    pub placements: u64,
    pub requests: usize,
    /// Requests waiting for the leader (to decide, or to release): the leader's queue, as
    /// `citadel_queued_requests` reports it on every replica.
    pub queued: usize,
}

#[derive(Debug, Serialize)]
pub struct EngineJson {
    pub id: String,
    pub addr: String,
    pub labels: Vec<String>,
    pub cordoned: bool,
    pub cpus: f64,
    pub memory_mb: f64,
    pub reserved_cpus: f64,
    pub reserved_memory_mb: f64,
    /// Decisions holding a reservation here.
    pub placements: u64,
    /// What the last health key said (a leader with `--docker` writes them).
    pub health: Option<HealthJson>,
    /// Why the engine's key is ignored, when its JSON is not an engine.
    pub invalid: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct HealthJson {
    pub last_contact: String,
    /// Milliseconds since `last_contact`, by this replica's clock (`null`: unreadable).
    pub age_ms: Option<u64>,
    pub checked_by: String,
    pub live_cpus: f64,
    pub live_memory_mb: f64,
    pub containers: usize,
}

#[derive(Debug, Serialize)]
pub struct CountJson {
    pub status: &'static str,
    pub count: usize,
}

#[derive(Debug, Serialize)]
pub struct GroupJson {
    pub status: &'static str,
    pub total: usize,
    pub shown: Vec<RequestJson>,
}

#[derive(Debug, Serialize)]
pub struct RequestJson {
    pub id: String,
    pub reason: String,
    pub engine: Option<String>,
    pub request_revision: i64,
    pub decision_revision: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct DecisionJson {
    pub id: String,
    /// When the decision was written (RFC 3339, as its `decided_at` says; `null` when etcd
    /// could not be read for it just now).
    pub decided_at: Option<String>,
    pub status: String,
    pub reason: String,
    pub engine: Option<String>,
    pub scheduler: Option<&'static str>,
    pub revision: i64,
    pub request_revision: i64,
}

/// Reads everything the page shows; the cache's lock is held once, for the copy alone.
pub fn state(s: &Surface) -> ApiState {
    let (ready, ready_reason) = super::readiness(s);
    let (healthy, health_reason) = super::health(s);
    let etcd_revision = s
        .metrics
        .etcd_seen()
        .revision
        .max(s.cache.progress().followed().head);
    let revision = s.cache.revision();
    let answered = s.metrics.etcd_seen().last_ok.map(|t| t.elapsed());
    let replica = ReplicaJson {
        id: s.replica.clone(),
        prefix: s.cache.keys().prefix().to_string(),
        leads: s.metrics.is_leader(),
        ready,
        ready_reason,
        healthy,
        health_reason,
        revision,
        etcd_revision,
        lag: (etcd_revision - revision).max(0),
        etcd_answered_at: answered
            .and_then(|ago| SystemTime::now().checked_sub(ago))
            .map(|t| humantime::format_rfc3339_millis(t).to_string()),
        etcd_silent_ms: answered.map(|d| d.as_millis() as u64),
    };
    let state = s.cache.read();
    let (engines, engines_total, cluster) = engines(&state);
    let counts = state.request_counts();
    let backlog = crate::metrics::backlog(&state, replica.leads, &counts);
    ApiState {
        generated_at: now_rfc3339(),
        replica,
        candidates: state
            .candidates()
            .into_iter()
            .map(|c| CandidateJson {
                id: c.info.as_ref().map(|i| i.id.clone()),
                addr: c.info.as_ref().map(|i| i.addr.clone()).unwrap_or_default(),
                status: c.info.as_ref().and_then(|i| i.status.clone()),
                version: c.info.as_ref().and_then(|i| i.version.clone()),
                leads_since: c.info.as_ref().and_then(|i| i.leads_since.clone()),
                since: c.info.map(|i| i.since).unwrap_or_default(),
                key: c.key,
                lease: format!("{:x}", c.lease),
                create_revision: c.create_revision,
                leads: c.leads,
            })
            .collect(),
        cluster: ClusterJson {
            requests: counts.iter().map(|(_, n)| n).sum(),
            queued: backlog.queued,
            ..cluster
        },
        engines,
        engines_total,
        request_counts: counts
            .iter()
            .map(|(standing, count)| CountJson {
                status: standing.name(),
                count: *count,
            })
            .collect(),
        requests: state
            .requests_by_standing(PER_STATUS)
            .into_iter()
            .map(|g| GroupJson {
                status: g.standing.name(),
                total: g.total,
                shown: g
                    .rows
                    .into_iter()
                    .map(|r| RequestJson {
                        id: r.id.to_string(),
                        reason: r.reason,
                        engine: r.engine,
                        request_revision: r.request_revision,
                        decision_revision: r.decision_revision,
                    })
                    .collect(),
            })
            .collect(),
        recent: state
            .recent_decisions(RECENT)
            .into_iter()
            .map(|d| DecisionJson {
                id: d.id.to_string(),
                status: Standing::Decided(d.status).name().to_string(),
                reason: d.reason,
                engine: d.engine,
                scheduler: d.scheduler,
                decided_at: None,
                revision: d.revision,
                request_revision: d.request_revision,
            })
            .collect(),
    }
}

/// When recent decisions were made. The cache keeps no decision times (nothing the scheduler
/// uses), so they are read from etcd, and kept: a decision's time never changes at its
/// revision, so a page that refreshes every few seconds reads only the decisions it has not
/// seen, and anyone polling `/api/state` costs etcd nothing more.
#[derive(Default)]
pub struct DecisionTimes {
    client: std::sync::OnceLock<etcd_client::Client>,
    /// By the decision's mod revision; only the recent ones are kept.
    known: std::sync::Mutex<std::collections::HashMap<i64, String>>,
}

impl DecisionTimes {
    /// The replica's client, once it has one (the first one stays).
    pub fn set_client(&self, client: &etcd_client::Client) {
        let _ = self.client.set(client.clone());
    }

    /// Fills in when each recent decision was made: those not known yet read from etcd in one
    /// transaction of at most [`RECENT`] gets, and only while etcd answers the replica's probe
    /// (else the page shows etcd unreachable, and a call would only hold it up). Without an
    /// answer, or for a decision rewritten since the cache read it, the time stays `null`.
    pub async fn fill(&self, state: &mut ApiState, keys: &crate::keys::Keys) {
        let mut known = self.known_now(state);
        let missing: Vec<&DecisionJson> = state
            .recent
            .iter()
            .filter(|d| !known.contains_key(&d.revision))
            .collect();
        if let Some(client) = self.client.get()
            && !missing.is_empty()
            && state.replica.healthy
        {
            known.extend(read_decided_at(client, &missing, keys).await);
        }
        for d in &mut state.recent {
            d.decided_at = known.get(&d.revision).cloned();
        }
        *self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = known;
    }

    /// The times known of `state`'s recent decisions (the others are forgotten).
    fn known_now(&self, state: &ApiState) -> std::collections::HashMap<i64, String> {
        let mut known = self
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state
            .recent
            .iter()
            .filter_map(|d| known.remove(&d.revision).map(|t| (d.revision, t)))
            .collect()
    }
}

/// How long reading the recent decisions' times may hold up the page.
const DECIDED_AT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The `decided_at` of `decisions`, by mod revision, read in one transaction (empty if etcd
/// does not answer within [`DECIDED_AT_WAIT`]).
async fn read_decided_at(
    client: &etcd_client::Client,
    decisions: &[&DecisionJson],
    keys: &crate::keys::Keys,
) -> std::collections::HashMap<i64, String> {
    use etcd_client::{GetOptions, Txn, TxnOp, TxnOpResponse};
    let mut times = std::collections::HashMap::new();
    let ops: Vec<TxnOp> = decisions
        .iter()
        .filter_map(|d| crate::model::RequestId::new(d.id.clone()).ok())
        .map(|id| {
            TxnOp::get(
                keys.decision(&id),
                Some(GetOptions::new().with_serializable()),
            )
        })
        .collect();
    if ops.is_empty() {
        return times;
    }
    let mut kv = client.kv_client();
    let read = kv.txn(Txn::new().and_then(ops));
    let resp = match tokio::time::timeout(DECIDED_AT_WAIT, read).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(error = %crate::store::short(&e), "http: cannot read the decisions' times");
            return times;
        }
        Err(_) => return times,
    };
    for r in resp.op_responses() {
        let TxnOpResponse::Get(g) = r else { continue };
        for kv in g.kvs() {
            #[derive(serde::Deserialize)]
            struct When {
                #[serde(default)]
                decided_at: String,
            }
            if let Ok(w) = serde_json::from_slice::<When>(kv.value())
                && !w.decided_at.is_empty()
            {
                times.insert(kv.mod_revision(), w.decided_at);
            }
        }
    }
    times
}

/// The engines (at most [`MAX_ENGINES`]), how many there are, and the cluster's sums (over
/// every valid engine).
fn engines(state: &Mirror) -> (Vec<EngineJson>, usize, ClusterJson) {
    let now = SystemTime::now();
    let rows = state.engine_rows();
    let total = rows.len();
    let mut cluster = ClusterJson {
        engines: 0,
        cpus: 0.0,
        reserved_cpus: 0.0,
        memory_mb: 0.0,
        reserved_memory_mb: 0.0,
        placements: 0,
        requests: 0,
        queued: 0,
    };
    let mut out = Vec::with_capacity(total.min(MAX_ENGINES));
    for (snap, addr, invalid) in rows {
        let id = EngineId::from_key_segment(&snap.id);
        let spec = id.as_ref().and_then(|id| state.engine_spec(id));
        let placements = id.as_ref().map_or(0, |id| state.placements_on(id));
        if invalid.is_none() {
            cluster.engines += 1;
            cluster.cpus += snap.cpus;
            cluster.memory_mb += snap.memory;
            cluster.reserved_cpus += snap.reserved_cpus;
            cluster.reserved_memory_mb += snap.reserved_memory;
            cluster.placements += placements;
        }
        if out.len() >= MAX_ENGINES {
            continue;
        }
        let health = id.as_ref().and_then(|id| state.health(id)).map(|h| {
            let h = &h.health;
            let age_ms = humantime::parse_rfc3339_weak(&h.last_contact)
                .ok()
                .map(|t| now.duration_since(t).map_or(0, |d| d.as_millis() as u64));
            HealthJson {
                last_contact: h.last_contact.clone(),
                age_ms,
                checked_by: h.checked_by.clone(),
                live_cpus: h.cpus_used,
                live_memory_mb: h.memory_used_mb,
                containers: h.containers_running,
            }
        });
        out.push(EngineJson {
            id: snap.id,
            addr,
            labels: spec.as_ref().map(|s| s.labels.clone()).unwrap_or_default(),
            cordoned: spec.as_ref().is_some_and(|s| s.cordoned),
            cpus: snap.cpus,
            memory_mb: snap.memory,
            reserved_cpus: snap.reserved_cpus,
            reserved_memory_mb: snap.reserved_memory,
            placements,
            health,
            invalid,
        });
    }
    (out, total, cluster)
}
