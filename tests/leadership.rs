//! Leadership as `citadel leader`, its JSON and the status API show it, on real etcd with the
//! real binary: since when the leader leads (not since when it campaigned), each candidate's
//! address (its status page when `--addr` is not given), lease ids that survive a JSON reader
//! with doubles, and a second replica under a running one's `--id`, refused, while a killed
//! one's restart goes on. And the queue a standby reports: the leader's, not its own view's.

mod common;

use std::net::SocketAddr;
use std::time::SystemTime;

use citadel_testkit::child::Signal;
use common::*;
use serde_json::Value;
use tokio::time::Instant;

/// `citadel leader -o json`, parsed.
fn election(endpoint: &str) -> Value {
    let (code, out, err) = cli(endpoint, &["leader", "-o", "json"]);
    assert_eq!(code, 0, "citadel leader: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Polls `f` every [`POLL`] until it gives something, at most [`WAIT`]; panics with `what`
/// and the last value seen.
async fn until<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("not {what} after {WAIT:?}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(POLL * 4).await,
        }
    }
}

/// The candidate `id` of an election, if listed.
fn candidate<'a>(e: &'a Value, id: &str) -> Option<&'a Value> {
    e["candidates"]
        .as_array()?
        .iter()
        .find(|c| c["id"].as_str() == Some(id))
}

fn time(v: &Value) -> SystemTime {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    humantime::parse_rfc3339_weak(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// The status page address `id` campaigns with.
fn status_of(e: &Value, id: &str) -> Option<SocketAddr> {
    candidate(e, id)?["status"].as_str()?.parse().ok()
}

/// GET `path` from a replica's status page, as JSON.
async fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (code, body) = http_get(addr, path).await.expect("the status page answers");
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// The page showed "since 10:39:42" for a leader that led from 10:39:51: the time its
/// campaign began. A standby that takes over says when it began to lead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leads_since_is_when_leadership_began_not_when_the_campaign_did() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut r1 = ReplicaProcess::start(&ep, "r1", dir.path(), &[]);
    until("r1 leading", || {
        let e = election(&ep);
        (e["leader"]["id"] == "r1")
            .then_some(())
            .ok_or(e.to_string())
    })
    .await;
    let _r2 = ReplicaProcess::start(&ep, "r2", dir.path(), &[]);
    let campaigning = until("r2 campaigning", || {
        let e = election(&ep);
        candidate(&e, "r2")
            .map(|c| time(&c["since"]))
            .ok_or(e.to_string())
    })
    .await;

    // r1 stops (and revokes its lease): r2 leads from now on.
    let handed_over = SystemTime::now();
    r1.signal(Signal::TERM);
    assert!(r1.wait_exit(WAIT), "r1 stopped:\n{}", r1.log());
    let (e, leads_since) = until("r2 leading, saying since when", || {
        let e = election(&ep);
        match e["leader"]["leads_since"].as_str() {
            Some(_) if e["leader"]["id"] == "r2" => {
                let t = time(&e["leader"]["leads_since"]);
                Ok((e, t))
            }
            _ => Err(e.to_string()),
        }
    })
    .await;
    assert!(campaigning < handed_over, "{e:#}");
    assert!(
        leads_since >= handed_over,
        "r2 leads since before r1 stopped: {e:#}"
    );
    assert_eq!(
        time(&e["leader"]["since"]),
        campaigning,
        "campaigning since: {e:#}"
    );
    let (code, table, err) = cli(&ep, &["leader"]);
    assert_eq!(code, 0, "{err}");
    let first = table.lines().next().unwrap_or_default();
    assert!(first.starts_with("leader: r2 (lease "), "{table}");
    assert!(
        first.contains("leads since") && !first.contains("campaigning"),
        "{table}"
    );

    // r2's own status API says the same.
    let addr = status_of(&e, "r2").expect("r2 serves a status page");
    let state = get_json(addr, "/api/state").await;
    let shown = state["candidates"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["leads"] == true).cloned())
        .unwrap_or_default();
    assert_eq!(shown["id"], "r2", "{state:#}");
    assert_eq!(time(&shown["leads_since"]), leads_since, "{state:#}");
}

/// The candidates' Address was always "–": with no `--addr`, a candidate's address is its
/// status page. And its lease, a u64 past 2^53 that jq rounded, is a string (hex, as
/// `etcdctl lease` writes it) in `leader -o json` and the status API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_shows_its_status_page_as_address_and_its_lease_as_a_string() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let client = connect(&etcd).await;
    let keys = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let _r1 = ReplicaProcess::start(&ep, "r1", dir.path(), &[]);
    let _r2 = ReplicaProcess::start(&ep, "r2", dir.path(), &["--addr", "10.0.0.2:7000"]);
    let e = until("both campaigning", || {
        let e = election(&ep);
        (candidate(&e, "r1").is_some() && candidate(&e, "r2").is_some())
            .then_some(())
            .map(|_| e.clone())
            .ok_or(e.to_string())
    })
    .await;
    let r1_page = status_of(&e, "r1").expect("r1's status page");
    let r1 = candidate(&e, "r1").expect("r1");
    assert_eq!(r1["addr"], format!("http://{r1_page}/"), "{e:#}");
    assert_eq!(
        candidate(&e, "r2").expect("r2")["addr"],
        "10.0.0.2:7000",
        "{e:#}"
    );

    // Each lease as etcd holds it, in hex, as a string.
    let mut leases = Vec::new();
    let resp = client
        .kv_client()
        .get(
            format!("{}/", keys.leader()),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("read the election keys");
    for kv in resp.kvs() {
        leases.push(format!("{:x}", kv.lease()));
    }
    let mut printed: Vec<String> = e["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .map(|c| {
            c["lease"]
                .as_str()
                .unwrap_or_else(|| panic!("a lease as a number: {c}"))
                .to_string()
        })
        .collect();
    printed.sort();
    leases.sort();
    assert_eq!(printed, leases, "{e:#}");
    assert!(e["leader"]["lease"].is_string(), "{e:#}");

    let state = get_json(r1_page, "/api/state").await;
    let shown = state["candidates"].as_array().expect("candidates");
    for c in shown {
        assert!(c["lease"].is_string(), "{c}");
    }
    let r1_row = shown.iter().find(|c| c["id"] == "r1").expect("r1 listed");
    assert_eq!(r1_row["addr"], format!("http://{r1_page}/"), "{state:#}");
}

/// Two replicas under one `--id` were accepted silently, and `leader` listed two `replica-1`.
/// The second is refused with one line while the first runs; after a SIGKILL, a restart under
/// the same id waits out the dead one's key (saying so) and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_under_a_running_ones_id_is_refused_and_a_restart_is_not() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = ReplicaProcess::start(&ep, "r1", dir.path(), &[]);
    until("r1 leading", || {
        let e = election(&ep);
        (e["leader"]["id"] == "r1")
            .then_some(())
            .ok_or(e.to_string())
    })
    .await;

    let twin_dir = tempfile::tempdir().expect("tempdir");
    let mut twin = ReplicaProcess::start(&ep, "r1", twin_dir.path(), &[]);
    assert!(twin.wait_exit(WAIT), "the twin still runs:\n{}", twin.log());
    let status = twin.child.wait().expect("the twin's status");
    assert!(!status.success(), "{status:?}");
    let log = twin.log();
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("citadel: error: another replica runs with --id r1: its election key")
            && last.ends_with("give each replica its own --id"),
        "{log}"
    );
    let e = election(&ep);
    let listed = e["candidates"].as_array().expect("candidates").len();
    assert_eq!(listed, 1, "one r1: {e:#}");
    assert!(first.child.try_wait().expect("r1").is_none(), "r1 runs on");

    // Killed, r1's key outlives it by its lease; a restart under r1 is no duplicate.
    let killed = e["leader"]["lease"].clone();
    first.signal(Signal::KILL);
    assert!(first.wait_exit(WAIT));
    let restart_dir = tempfile::tempdir().expect("tempdir");
    let mut again = ReplicaProcess::start(&ep, "r1", restart_dir.path(), &[]);
    until("the restarted r1 leading", || {
        assert!(
            again.child.try_wait().expect("r1 again").is_none(),
            "the restart exited:\n{}",
            again.log()
        );
        let e = election(&ep);
        let one = e["candidates"].as_array().map(Vec::len) == Some(1);
        let new_lease = e["leader"]["lease"] != killed;
        (one && new_lease && e["leader"]["id"] == "r1" && e["leader"]["leads_since"].is_string())
            .then_some(())
            .ok_or(e.to_string())
    })
    .await;
    assert!(
        again
            .log()
            .contains("an election key bears this replica's --id"),
        "{}",
        again.log()
    );
    drop(again);
}

/// A standby showed "QUEUED FOR THE LEADER 4" and `citadel_queued_requests 4` while the leader
/// showed 0: the 4 were unschedulable requests the leader had parked. Every replica reports the
/// leader's queue (and its parked requests), so one alert rule serves them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_reports_the_leaders_queue_not_its_parked_requests() {
    let etcd = start_etcd().await;
    let ep = etcd.endpoint();
    let client = connect(&etcd).await;
    let keys = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    let _r1 = ReplicaProcess::start(&ep, "r1", dir.path(), &[]);
    let e = until("r1 leading", || {
        let e = election(&ep);
        (e["leader"]["id"] == "r1")
            .then_some(e.clone())
            .ok_or(e.to_string())
    })
    .await;
    let leader_page = status_of(&e, "r1").expect("r1's page");
    let _r2 = ReplicaProcess::start(&ep, "r2", dir.path(), &[]);
    let e = until("r2 campaigning", || {
        let e = election(&ep);
        candidate(&e, "r2")
            .is_some()
            .then_some(e.clone())
            .ok_or(e.to_string())
    })
    .await;
    let standby_page = status_of(&e, "r2").expect("r2's page");

    put_engine(&client, &keys, "e1", 1.0, 512.0, &[]).await;
    for i in 0..4 {
        put_request(
            &client,
            &keys,
            &format!("big-{i}"),
            request_json(8.0, 64, serde_json::json!({})),
        )
        .await;
    }
    for i in 0..4 {
        let d = wait_decision(&client, &keys, &format!("big-{i}"), WAIT).await;
        assert_eq!(d.status, citadel::model::Status::Unschedulable, "{d:?}");
    }
    // The newest decision's revision: each replica's cache reaches it before it is read.
    let mut last = 0;
    for i in 0..4 {
        let d = get(&client, &keys.decision(&rid(&format!("big-{i}")))).await;
        last = last.max(d.expect("decided").mod_revision);
    }

    for (who, page) in [("leader", leader_page), ("standby", standby_page)] {
        let deadline = Instant::now() + WAIT;
        let text = loop {
            let (code, text) = http_get(page, "/metrics").await.expect("metrics");
            assert_eq!(code, 200);
            let caught_up =
                metric(&text, "citadel_cache_revision").is_some_and(|r| r >= last as f64);
            if caught_up && metric(&text, "citadel_queued_requests") == Some(0.0) {
                break text;
            }
            assert!(Instant::now() < deadline, "{who}: {text}");
            tokio::time::sleep(POLL * 4).await;
        };
        assert_eq!(
            metric(&text, "citadel_parked_requests"),
            Some(4.0),
            "{who}: {text}"
        );
        let state = get_json(page, "/api/state").await;
        assert_eq!(state["cluster"]["queued"], 0, "{who}: {state:#}");
        assert_eq!(state["replica"]["leads"], who == "leader", "{who}");
    }
}

/// A series' value in Prometheus text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
