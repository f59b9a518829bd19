//! Helpers for the integration tests, each in one place: a real etcd per test, in-process and
//! real-binary controller replicas, ids, engines and requests as users write them, bounded
//! polling of what the leader writes back, running the binary and other programs
//! ([`commands`]), and throwaway certificate authorities ([`pki`]).
//!
//! Every wait here is bounded and panics with what it last saw, so a failing test says why.

// Each test binary that declares `mod common;` uses its own subset of these helpers.
#![allow(dead_code)]

pub mod commands;
pub mod pki;

// As `common::cli` and the like: each test binary uses its own subset.
#[allow(unused_imports)]
pub use commands::*;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use citadel::controller::{self, ControllerConfig, ControllerError};
use citadel::invariants::{self, Report};
use citadel::keys::Keys;
use citadel::manager::ManagerConfig;
use citadel::model::{Decision, EngineId, RequestId, Reservation};
use citadel::scheduler::Schedulers;
use citadel::store::EtcdConfig;
use citadel_testkit::etcd::EtcdProcess;
use etcd_client::{Client, GetOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(20);
/// How often polling helpers look again.
pub const POLL: Duration = Duration::from_millis(50);
/// Bound on one etcd call made by a helper.
const CALL: Duration = Duration::from_secs(5);

/// Logs to the test's output when `RUST_LOG` is set (e.g. `RUST_LOG=citadel=debug`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// A fresh single-member etcd on free loopback ports.
pub async fn start_etcd() -> EtcdProcess {
    init_tracing();
    EtcdProcess::start().await.expect("start etcd")
}

/// How to reach `etcd`: its endpoint, and with TLS its CA (no client certificate and no user:
/// add them for the client at hand).
pub fn client_config(etcd: &EtcdProcess) -> citadel::store::EtcdConfig {
    let cfg = citadel::store::EtcdConfig::new(vec![etcd.endpoint()]);
    match etcd.ca() {
        Some(ca) => cfg.with_tls(citadel::store::TlsConfig {
            cacert: Some(ca.to_path_buf()),
            identity: None,
        }),
        None => cfg,
    }
}

/// A client for `etcd`, connected and proven to answer.
pub async fn connect(etcd: &EtcdProcess) -> Client {
    connect_with(&EtcdConfig::new(vec![etcd.endpoint()])).await
}

/// A client connected with `cfg` (TLS, credentials), proven to answer.
pub async fn connect_with(cfg: &EtcdConfig) -> Client {
    citadel::store::connect(cfg, Some(Duration::from_secs(10)))
        .await
        .unwrap_or_else(|e| panic!("connect to etcd at {}: {e}", cfg.endpoints_str()))
}

pub fn keys() -> Keys {
    Keys::default()
}

/// A request id as a key segment: lets tests name ids that `RequestId::new` refuses (too long,
/// with a space), which the controller must still answer with an `invalid` decision.
pub fn rid(id: &str) -> RequestId {
    RequestId::from_key_segment(id).unwrap_or_else(|| panic!("{id:?} cannot name a key"))
}

pub fn eid(id: &str) -> EngineId {
    EngineId::new(id).expect("engine id")
}

/// An in-process replica's configuration: a 2 s lease, default schedulers, no overcommit, no
/// engine contacted and no HTTP surface.
pub fn controller_config(
    etcd: EtcdConfig,
    id: &str,
    policy: citadel::cache::HealthPolicy,
    max_txn_ops: usize,
) -> ControllerConfig {
    ControllerConfig {
        etcd,
        keys: keys(),
        manager: ManagerConfig {
            replica: citadel::model::ReplicaId::new(id).expect("a replica id"),
            schedulers: Schedulers::default(),
            workers: 2,
            compact_every: None,
            compact_retain: 10_000,
            max_txn_ops,
            preempt_gap: 1,
        },
        addr: format!("test://{id}"),
        lease_ttl: 2,
        overcommit: 1.0,
        docker: None,
        policy,
        listen: None,
        http_allow_hosts: Default::default(),
        metrics: Default::default(),
    }
}

/// One in-process controller replica.
pub struct Replica {
    pub id: String,
    /// The replica's own view of the cluster.
    pub cache: std::sync::Arc<citadel::cache::Cache>,
    /// What the replica counts.
    pub metrics: std::sync::Arc<citadel::metrics::Metrics>,
    shutdown: watch::Sender<bool>,
    handle: Option<JoinHandle<Result<(), ControllerError>>>,
}

impl Replica {
    /// Starts a replica with a 2 s lease against `etcd`, default schedulers and no overcommit.
    pub fn start(etcd: &EtcdProcess, id: &str) -> Replica {
        Replica::start_at(&etcd.endpoint(), id)
    }

    /// Starts a replica that reaches etcd at `endpoint` (e.g. through a [`Proxy`]).
    pub fn start_at(endpoint: &str, id: &str) -> Replica {
        Replica::start_with_policy(endpoint, id, Default::default())
    }

    /// Starts a replica whose scheduling follows `policy` (health keys, live usage), without
    /// contacting any engine: tests write the health keys themselves.
    pub fn start_with_policy(
        endpoint: &str,
        id: &str,
        policy: citadel::cache::HealthPolicy,
    ) -> Replica {
        Replica::start_with(endpoint, id, policy, citadel::manager::MAX_TXN_OPS)
    }

    /// Starts a replica that packs up to `max_txn_ops` compares and operations a transaction.
    pub fn start_with_max_txn_ops(endpoint: &str, id: &str, max_txn_ops: usize) -> Replica {
        Replica::start_with(endpoint, id, Default::default(), max_txn_ops)
    }

    fn start_with(
        endpoint: &str,
        id: &str,
        policy: citadel::cache::HealthPolicy,
        max_txn_ops: usize,
    ) -> Replica {
        let etcd = EtcdConfig::new(vec![endpoint.to_string()]);
        Replica::run(controller_config(etcd, id, policy, max_txn_ops))
    }

    /// Starts a replica that reaches etcd as `etcd` says (TLS, credentials).
    pub fn start_etcd_config(etcd: EtcdConfig, id: &str) -> Replica {
        Replica::run(controller_config(
            etcd,
            id,
            Default::default(),
            citadel::manager::MAX_TXN_OPS,
        ))
    }

    /// Starts a replica that also serves its HTTP surface on `listen`.
    pub fn start_serving(endpoint: &str, id: &str, listen: SocketAddr) -> Replica {
        let etcd = EtcdConfig::new(vec![endpoint.to_string()]);
        let mut cfg =
            controller_config(etcd, id, Default::default(), citadel::manager::MAX_TXN_OPS);
        cfg.listen = Some(listen.into());
        Replica::run(cfg)
    }

    /// Runs `cfg` on a task of its own.
    fn run(cfg: ControllerConfig) -> Replica {
        let id = cfg.manager.replica.to_string();
        let (shutdown, rx) = watch::channel(false);
        let (cache, books) = controller::replica_cache(&cfg);
        let metrics = cfg.metrics.clone();
        let handle = tokio::spawn(controller::run_with_cache(cfg, cache.clone(), books, rx));
        Replica {
            id,
            cache,
            metrics,
            shutdown,
            handle: Some(handle),
        }
    }

    /// Asks the replica to stop (it resigns if it leads) without waiting for it.
    pub fn signal_stop(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Stops the replica and waits (bounded) until its task has returned.
    pub async fn stop(mut self) {
        self.signal_stop();
        if let Some(handle) = self.handle.take() {
            match tokio::time::timeout(WAIT, handle).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("replica {} failed: {e}", self.id),
                Ok(Err(e)) => panic!("replica {} panicked: {e}", self.id),
                Err(_) => panic!("replica {} did not stop within {WAIT:?}", self.id),
            }
        }
    }

    /// Waits (at most `timeout`) for the replica to end by itself, without asking it to, and
    /// returns how it ended.
    pub async fn exited(mut self, timeout: Duration) -> Result<(), ControllerError> {
        let handle = self.handle.take().expect("a running replica");
        match tokio::time::timeout(timeout, handle).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => panic!("replica {} panicked: {e}", self.id),
            Err(_) => panic!("replica {} still runs after {timeout:?}", self.id),
        }
    }

    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// A TCP proxy in front of etcd that a test can cut, like a network partition: a cut drops every
/// open connection and closes new ones at once, until healed. Real etcd, real sockets.
pub struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(etcd: &EtcdProcess) -> Proxy {
        let target: SocketAddr = etcd
            .endpoint()
            .trim_start_matches("http://")
            .parse()
            .expect("etcd endpoint is http://ip:port");
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if *cut_rx.borrow() {
                    continue; // dropped: closed at once
                }
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Proxy { addr, cut, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client that reaches etcd through this proxy, connected as replicas connect.
    pub async fn connect(&self) -> Client {
        citadel::store::connect(
            &EtcdConfig::new(vec![self.endpoint()]),
            Some(Duration::from_secs(10)),
        )
        .await
        .expect("connect through the proxy")
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bounds one etcd call so that a helper never hangs past its caller's deadline.
async fn call<T>(
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, etcd_client::Error> {
    tokio::time::timeout(CALL, fut)
        .await
        .unwrap_or_else(|_| Err(etcd_client::Error::InvalidArgs("call timed out".into())))
}

/// Puts a raw value under a raw key; returns the put's revision (the key's mod revision).
pub async fn put_raw(client: &Client, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> i64 {
    let key = key.into();
    let resp = call(client.kv_client().put(key.clone(), value, None))
        .await
        .unwrap_or_else(|e| panic!("put {}: {e}", String::from_utf8_lossy(&key)));
    resp.header().expect("put header").revision()
}

/// An engine as `citadel engine add` writes it: `id` at `tcp://ID.test:2375` with `cpus`,
/// `memory` MB and `labels`.
pub fn engine_json(id: &str, cpus: f64, memory: f64, labels: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "addr": format!("tcp://{id}.test:2375"),
        "cpus": cpus,
        "memory": memory,
        "labels": labels,
    })
}

/// Writes `engine` under `engines/<id>`; returns its mod revision.
pub async fn put_engine_json(
    client: &Client,
    keys: &Keys,
    id: &str,
    engine: &serde_json::Value,
) -> i64 {
    put_raw(
        client,
        keys.engine(&eid(id)),
        serde_json::to_vec(engine).expect("engine json"),
    )
    .await
}

/// Registers an engine as `citadel engine add` would ([`engine_json`]); returns what it wrote.
pub async fn put_engine(
    client: &Client,
    keys: &Keys,
    id: &str,
    cpus: f64,
    memory: f64,
    labels: &[&str],
) -> serde_json::Value {
    let engine = engine_json(id, cpus, memory, labels);
    put_engine_json(client, keys, id, &engine).await;
    engine
}

/// Writes a request's value byte for byte under `requests/<id>`; returns its mod revision.
pub async fn put_request(client: &Client, keys: &Keys, id: &str, value: impl Into<Vec<u8>>) -> i64 {
    put_raw(client, keys.request(&rid(id)), value).await
}

/// A small valid request: `cpus` cpus, `memory` MB, type `service`, plus any extra fields.
pub fn request_json(cpus: f64, memory: u64, extra: serde_json::Value) -> String {
    let mut v = serde_json::json!({
        "image": "busybox",
        "cpus": cpus,
        "memory": memory,
        "type": "service",
    });
    if let (Some(obj), Some(more)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in more {
            obj.insert(k.clone(), val.clone());
        }
    }
    v.to_string()
}

/// Writes every `(id, value)` request in one transaction (the leader then decides them in one
/// round); returns the transaction's revision, each one's mod revision.
pub async fn put_requests_together(
    client: &Client,
    keys: &Keys,
    requests: &[(String, String)],
) -> i64 {
    let ops: Vec<etcd_client::TxnOp> = requests
        .iter()
        .map(|(id, v)| etcd_client::TxnOp::put(keys.request(&rid(id)), v.clone(), None))
        .collect();
    let resp = call(
        client
            .kv_client()
            .txn(etcd_client::Txn::new().and_then(ops)),
    )
    .await
    .unwrap_or_else(|e| panic!("one transaction of {} requests: {e}", requests.len()));
    resp.header().expect("txn header").revision()
}

pub async fn delete_key(client: &Client, key: impl Into<Vec<u8>>) {
    let key = key.into();
    call(client.kv_client().delete(key.clone(), None))
        .await
        .unwrap_or_else(|e| panic!("delete {}: {e}", String::from_utf8_lossy(&key)));
}

/// A key's value, mod revision and version, if it exists.
pub struct Got {
    pub value: Vec<u8>,
    pub mod_revision: i64,
    pub version: i64,
}

pub async fn try_get(client: &Client, key: &str) -> Result<Option<Got>, etcd_client::Error> {
    let resp = call(client.kv_client().get(key, None)).await?;
    Ok(resp.kvs().first().map(|kv| Got {
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
    }))
}

pub async fn get(client: &Client, key: &str) -> Option<Got> {
    try_get(client, key)
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"))
}

/// The value under `key` as JSON, as `etcdctl get` would show it.
pub async fn get_json(client: &Client, key: &str) -> Option<serde_json::Value> {
    get(client, key).await.map(|g| {
        serde_json::from_slice(&g.value).unwrap_or_else(|e| {
            panic!(
                "{key} is not JSON ({e}): {}",
                String::from_utf8_lossy(&g.value)
            )
        })
    })
}

/// Every `(key, value)` under a prefix.
pub async fn get_prefix(client: &Client, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let resp = call(
        client
            .kv_client()
            .get(prefix, Some(GetOptions::new().with_prefix())),
    )
    .await
    .unwrap_or_else(|e| panic!("get --prefix {prefix}: {e}"));
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            )
        })
        .collect()
}

/// Every reservation as `(engine, request, reservation)`: what each decision holds.
pub async fn reservations(client: &Client, keys: &Keys) -> Vec<(String, String, Reservation)> {
    let prefix = keys.decisions();
    get_prefix(client, &prefix)
        .await
        .into_iter()
        .filter_map(|(key, value)| {
            let request = key.strip_prefix(&prefix).expect("under the prefix");
            let d: Decision = serde_json::from_slice(&value)
                .unwrap_or_else(|e| panic!("{key}: {e}: {}", String::from_utf8_lossy(&value)));
            let r = d.reservation?;
            let engine = d
                .resource
                .unwrap_or_else(|| panic!("{key} holds a reservation on no engine"))
                .id;
            Some((engine, request.to_string(), r))
        })
        .collect()
}

/// The reservations held for one request, on any engine.
pub async fn reservations_for(
    client: &Client,
    keys: &Keys,
    id: &str,
) -> Vec<(String, Reservation)> {
    reservations(client, keys)
        .await
        .into_iter()
        .filter(|(_, r, _)| r == id)
        .map(|(e, _, r)| (e, r))
        .collect()
}

/// The decision on `id` as it is now, if there is one; panics if it is unreadable.
pub async fn decision(client: &Client, keys: &Keys, id: &str) -> Option<Decision> {
    let key = keys.decision(&rid(id));
    get(client, &key).await.map(|g| {
        serde_json::from_slice(&g.value).unwrap_or_else(|e| {
            panic!(
                "{key} is not a decision ({e}): {}",
                String::from_utf8_lossy(&g.value)
            )
        })
    })
}

/// The engine a decision names, if it names one.
pub fn engine_of(d: &Decision) -> Option<String> {
    d.resource.as_ref().map(|r| r.id.clone())
}

/// The engine a placed decision names; panics if the decision is not placed or names none.
pub fn placed_engine(d: &Decision) -> String {
    assert_eq!(d.status, citadel::model::Status::Placed, "{d:?}");
    engine_of(d).unwrap_or_else(|| panic!("placed decision without a resource: {d:?}"))
}

/// A decision as a leader writes it: placed on engine `e1` (4 cpus, 4096 MB), holding `cpus`
/// and 64 MB, for the request's revision `request_revision`.
pub fn placed_on_e1(cpus: f64, request_revision: i64) -> String {
    serde_json::json!({
        "container": {"image": "x", "cpus": cpus, "memory": 64},
        "resource": {"id": "e1", "addr": "tcp://e1:2375", "total_cpus": 4.0, "total_memory": 4096.0},
        "reservation": {"cpus": cpus, "memory": 64.0},
        "status": "placed",
        "reason": "spread chose e1",
        "request_revision": request_revision,
        "decided_at": "2026-11-29T00:00:00Z",
        "decided_by": "a-leader",
    })
    .to_string()
}

/// Waits (polling every 50 ms, at most `timeout`) for any readable decision on `id`.
pub async fn wait_decision(client: &Client, keys: &Keys, id: &str, timeout: Duration) -> Decision {
    wait_decision_where(client, keys, id, timeout, "any decision", |_| true).await
}

/// Waits (polling every 50 ms, at most `timeout`) for a decision on `id` that satisfies `want`.
/// Errors from etcd (it may be restarting) are retried until the deadline.
pub async fn wait_decision_where(
    client: &Client,
    keys: &Keys,
    id: &str,
    timeout: Duration,
    what: &str,
    want: impl Fn(&Decision) -> bool,
) -> Decision {
    let key = keys.decision(&rid(id));
    let deadline = Instant::now() + timeout;
    loop {
        let last = match try_get(client, &key).await {
            Ok(Some(got)) => match serde_json::from_slice::<Decision>(&got.value) {
                Ok(d) if want(&d) => return d,
                Ok(_) => String::from_utf8_lossy(&got.value).into_owned(),
                Err(e) => format!("unreadable ({e}): {}", String::from_utf8_lossy(&got.value)),
            },
            Ok(None) => String::from("no decision key"),
            Err(e) => format!("etcd error: {e}"),
        };
        if Instant::now() >= deadline {
            let shown: String = last.chars().take(600).collect();
            panic!("request {id}: no {what} within {timeout:?}; last seen: {shown}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `cond` every 50 ms until it is true; panics after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The replica that currently leads: the election key with the lowest create revision.
pub async fn leader_id(client: &Client, keys: &Keys) -> Option<String> {
    let resp = call(client.kv_client().get(
        format!("{}/", keys.leader()),
        Some(GetOptions::new().with_prefix()),
    ))
    .await
    .ok()?;
    let kv = resp.kvs().iter().min_by_key(|kv| kv.create_revision())?;
    let info: citadel::model::LeaderInfo = serde_json::from_slice(kv.value()).ok()?;
    Some(info.id)
}

/// Waits (polling every 50 ms, at most `timeout`) until some replica leads; returns its id.
pub async fn wait_leader(client: &Client, keys: &Keys, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(id) = leader_id(client, keys).await {
            return id;
        }
        assert!(Instant::now() < deadline, "no leader within {timeout:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Checks invariants 1 and 2 on etcd's contents and panics with the report if any is violated.
pub async fn assert_invariants(client: &Client, keys: &Keys) -> Report {
    let report = invariants::check_etcd(client, keys, 1.0)
        .await
        .expect("read etcd for the invariants check");
    assert_eq!(report.violations(), 0, "invariants violated: {report:#?}");
    report
}

/// A decision as read from etcd, with how many times its key was written since it was created.
#[derive(Debug, Clone)]
pub struct Decided {
    pub decision: Decision,
    pub version: i64,
}

/// Waits (polling every 50 ms, at most `timeout`) until every request in `want` (id → its mod
/// revision) has a decision for that revision. Errors from etcd are retried until the deadline.
pub async fn wait_all_decided(
    client: &Client,
    keys: &Keys,
    want: &std::collections::BTreeMap<String, i64>,
    timeout: Duration,
) -> std::collections::BTreeMap<String, Decided> {
    let prefix = keys.decisions();
    let deadline = Instant::now() + timeout;
    loop {
        let mut found = std::collections::BTreeMap::new();
        let mut error = None;
        match call(
            client
                .kv_client()
                .get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await
        {
            Ok(resp) => {
                for kv in resp.kvs() {
                    let key = String::from_utf8_lossy(kv.key());
                    let Some(id) = key.strip_prefix(&prefix) else {
                        continue;
                    };
                    if let Ok(d) = serde_json::from_slice::<Decision>(kv.value()) {
                        found.insert(
                            id.to_string(),
                            Decided {
                                decision: d,
                                version: kv.version(),
                            },
                        );
                    }
                }
            }
            Err(e) => error = Some(e.to_string()),
        }
        let missing: Vec<&String> = want
            .iter()
            .filter(|(id, rev)| {
                found
                    .get(*id)
                    .is_none_or(|d| d.decision.request_revision != **rev)
            })
            .map(|(id, _)| id)
            .collect();
        if error.is_none() && missing.is_empty() {
            return found;
        }
        if Instant::now() >= deadline {
            panic!(
                "{} of {} requests undecided after {timeout:?} (last etcd error: {error:?}): {:?}",
                missing.len(),
                want.len(),
                missing.iter().take(20).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A controller replica process: the real binary (or the one `CITADEL_TEST_BIN` names, to
/// measure another build with the same test), logging to a file; SIGKILLed when dropped.
pub struct ReplicaProcess {
    pub id: String,
    pub child: std::process::Child,
    log: std::path::PathBuf,
}

impl ReplicaProcess {
    pub fn binary() -> String {
        std::env::var("CITADEL_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_citadel").into())
    }

    /// Starts `citadel --etcd ENDPOINTS controller --id ID ARGS…`, logging at info into DIR/ID.log.
    pub fn start(endpoints: &str, id: &str, dir: &std::path::Path, args: &[&str]) -> Self {
        let log = dir.join(format!("{id}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = std::process::Command::new(Self::binary());
        cmd.args(["--etcd", endpoints, "controller", "--id", id]);
        if std::env::var_os("CITADEL_TEST_BIN").is_none() {
            // Several replicas on one host: each serves its status page on a free port.
            // (Another build, measured with the same test, may not know the flag.)
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let child = cmd
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start citadel controller");
        ReplicaProcess {
            id: id.to_string(),
            child,
            log,
        }
    }

    pub fn signal(&self, sig: citadel_testkit::child::Signal) {
        citadel_testkit::child::signal(self.child.id(), sig)
            .unwrap_or_else(|e| panic!("kill {sig:?} {}: {e}", self.id));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit (bounded); true if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd's current revision.
pub async fn revision(client: &Client) -> i64 {
    client
        .kv_client()
        .get("/", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}
