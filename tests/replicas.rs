//! Several replicas on one host, started the plain way (no `--listen`): each takes a status
//! port of its own, its election key says which, and they fail over to one another.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use citadel::model::Status;
use serde_json::{Value, json};
use tokio::time::Instant;

mod common;
use common::*;

/// The longest a failover may take here: the dead leader's lease (5 s by default) must expire
/// first, on a machine that may be busy.
const FAILOVER: Duration = Duration::from_secs(40);

/// `citadel --etcd ENDPOINT controller --id ID` and nothing else, logging into DIR/ID.log.
struct Plain {
    id: String,
    child: Child,
    log: PathBuf,
}

impl Plain {
    fn start(endpoint: &str, id: &str, dir: &Path) -> Plain {
        let log = dir.join(format!("{id}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_citadel"))
            .args(["--etcd", endpoint, "controller", "--id", id])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start citadel controller");
        Plain {
            id: id.to_string(),
            child,
            log,
        }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Plain {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every replica's log, for a failure's message.
fn logs(rs: &[Plain]) -> String {
    rs.iter()
        .map(|r| format!("--- {}:\n{}", r.id, r.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Panics, with their logs, if any replica has exited.
fn all_running(rs: &mut [Plain]) {
    let exited: Vec<String> = rs
        .iter_mut()
        .filter_map(|r| (!r.running()).then(|| r.id.clone()))
        .collect();
    assert!(exited.is_empty(), "{exited:?} exited:\n{}", logs(rs));
}

/// `citadel leader -o json`, parsed.
fn election(endpoint: &str) -> Value {
    let (code, out, err) = cli(endpoint, &["leader", "-o", "json"]);
    assert_eq!(code, 0, "citadel leader: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Every candidate's id and status page address, once all `n` have one and one of them leads:
/// (leader, id → address).
fn candidates(e: &Value, n: usize) -> Option<(String, Vec<(String, SocketAddr)>)> {
    let list = e["candidates"].as_array()?;
    let found: Vec<(String, SocketAddr)> = list
        .iter()
        .filter_map(|c| {
            let id = c["id"].as_str()?.to_string();
            let status = c["status"].as_str()?.parse().ok()?;
            Some((id, status))
        })
        .collect();
    let leader = e["leader"]["id"].as_str()?.to_string();
    (list.len() == n && found.len() == n).then_some((leader, found))
}

/// Polls `/readyz` at `addr` until it answers 200 (bounded); returns its body.
async fn ready(addr: SocketAddr, who: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let got = http_get(addr, "/readyz").await;
        if let Ok((200, body)) = &got {
            return body.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{who} at {addr} not ready after {within:?}: {got:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits (bounded) until every replica campaigns with the address it serves on and one of them
/// leads, each still running: (leader, id → address).
async fn campaigning(
    endpoint: &str,
    replicas: &mut [Plain],
) -> (String, Vec<(String, SocketAddr)>) {
    let deadline = Instant::now() + WAIT;
    loop {
        all_running(replicas);
        if let Some(found) = candidates(&election(endpoint), replicas.len()) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} candidates with a status address and a leader within {WAIT:?}: {}\n{}",
            replicas.len(),
            election(endpoint),
            logs(replicas)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Checks that `addr` serves replica `id`'s own page: ready as leader or standby, healthy.
async fn own_page(id: &str, addr: SocketAddr, leads: bool) {
    let body = ready(addr, id, WAIT).await;
    let role = if leads { "leader" } else { "standby" };
    assert!(body.starts_with(&format!("ready: {role}")), "{id}: {body}");
    let (code, health) = http_get(addr, "/healthz").await.expect("/healthz");
    assert_eq!(code, 200, "{id}: {health}");
    let (code, state) = http_get(addr, "/api/state").await.expect("/api/state");
    assert_eq!(code, 200);
    let state: Value = serde_json::from_str(&state).expect("state json");
    assert_eq!(
        state["replica"]["id"],
        json!(id),
        "{addr} serves {id}'s page"
    );
}

/// Waits (bounded by [`FAILOVER`]) until a replica other than `gone` leads, the others still
/// running; returns its id.
async fn taken_over(endpoint: &str, replicas: &mut [Plain], gone: &str) -> String {
    let deadline = Instant::now() + FAILOVER;
    loop {
        all_running(replicas);
        let e = election(endpoint);
        if let Some(id) = e["leader"]["id"].as_str()
            && id != gone
        {
            return id.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "nobody took over from {gone} within {FAILOVER:?}: {e}\n{}",
            logs(replicas)
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_without_listen_share_a_host_and_fail_over() {
    // The default port taken (by this test, unless something else on the machine holds it
    // already): no replica may depend on having it.
    let _held = std::net::TcpListener::bind("127.0.0.1:9090");
    let etcd = start_etcd().await;
    let endpoint = etcd.endpoint();
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 8.0, 8192.0, &[]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replicas: Vec<Plain> = ["r1", "r2", "r3"]
        .iter()
        .map(|id| Plain::start(&endpoint, id, dir.path()))
        .collect();
    // All three campaign, each with the address it serves on.
    let (leader, served) = campaigning(&endpoint, &mut replicas).await;
    let ids: BTreeSet<&str> = served.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, BTreeSet::from(["r1", "r2", "r3"]));
    let addrs: BTreeSet<SocketAddr> = served.iter().map(|(_, a)| *a).collect();
    assert_eq!(addrs.len(), 3, "distinct addresses: {served:?}");
    let default: SocketAddr = "127.0.0.1:9090".parse().expect("addr");
    assert!(!addrs.contains(&default), "9090 is held: {served:?}");
    let e = election(&endpoint);
    let leads: Vec<&Value> = e["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .filter(|c| c["leads"] == json!(true))
        .collect();
    assert_eq!(leads.len(), 1, "exactly one leads: {e}");

    // Each address is that replica's own page: healthy, and leader or standby as elected.
    for (id, addr) in &served {
        own_page(id, *addr, *id == leader).await;
    }
    let (code, table, err) = cli(&endpoint, &["leader"]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("STATUS PAGE"), "{table}");
    for (_, addr) in &served {
        assert!(table.contains(&format!("http://{addr}/")), "{table}");
    }

    // The leader dies without a word; another takes over and places.
    let i = replicas
        .iter()
        .position(|r| r.id == leader)
        .expect("the leader is ours");
    let mut dead = replicas.remove(i);
    dead.child.kill().expect("SIGKILL the leader");
    dead.child.wait().expect("reap it");
    let next = taken_over(&endpoint, &mut replicas, &leader).await;
    let (_, next_addr) = served
        .iter()
        .find(|(id, _)| *id == next)
        .expect("the new leader was a candidate");
    let body = ready(*next_addr, &next, FAILOVER).await;
    assert!(body.starts_with("ready: leader"), "{next}: {body}");
    put_request(&client, &keys, "after", request_json(1.0, 64, json!({}))).await;
    let d = wait_decision_where(&client, &keys, "after", WAIT, "placed", |d| {
        d.status == Status::Placed
    })
    .await;
    assert_eq!(d.decided_by, next, "{d:?}");
}
