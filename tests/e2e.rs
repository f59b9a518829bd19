//! End to end with the real binary: three controller replicas, a real etcd, leaders killed.
//!
//! Figures (hand-over times) are printed, never asserted: this machine is shared and noisy.
//! Run with `cargo test --test e2e -- --nocapture` to see them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use citadel::invariants;
use citadel::keys::Keys;
use citadel::model::Status;
use citadel_testkit::child::Signal;
use common::{cli, decision, put_request};
use etcd_client::Client;
use serde_json::json;

mod common;

const LEASE_TTL: &str = "2";

/// A controller replica process (the real binary); SIGKILLed when dropped.
type Replica = common::ReplicaProcess;

/// The nice value of every thread of `pid` ("self" for this process).
fn nice_of(pid: &str) -> Vec<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc tasks");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter_map(|stat| {
            // After the command name: state is field 3, nice field 19.
            let rest = stat.rsplit_once(')')?.1;
            rest.split_whitespace().nth(16)?.parse().ok()
        })
        .collect()
}

/// Time from `since` until request `id` is decided by someone other than `old_leader`.
async fn time_to_decision(
    client: &Client,
    keys: &Keys,
    id: &str,
    old_leader: &str,
    since: Instant,
    timeout: Duration,
) -> Duration {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(d) = decision(client, keys, id).await {
            assert_ne!(d.decided_by, old_leader, "the stopped leader decided {id}");
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{id} not decided within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The `i`th request of a load: about 38 of the 40 cpus the ten engines have, nearly full, so
/// verification matters; some batch, some binding a port, some with a label constraint.
fn load_request(i: usize) -> String {
    let cpus = [0.05, 0.1, 0.2, 0.4][i % 4];
    let memory = [64, 128, 256, 512][i % 4];
    let kind = if i.is_multiple_of(3) {
        "batch"
    } else {
        "service"
    };
    let mut extra = json!({"image": format!("busybox:{i}"), "type": kind});
    if i.is_multiple_of(10) {
        extra["bind_ports"] = json!([{"port": 8000 + (i % 3)}]);
    }
    if i.is_multiple_of(7) {
        extra["labels"] = json!(["zone==a"]);
    }
    common::request_json(cpus, memory, extra)
}

/// Every request has exactly one decision, for its current revision, and invariants 1-2 hold.
async fn assert_all_decided(client: &Client, keys: &Keys, revisions: &BTreeMap<String, i64>) {
    common::wait_all_decided(client, keys, revisions, Duration::from_secs(30)).await;
    let report = common::assert_invariants(client, keys).await;
    assert_eq!(
        report.decided,
        revisions.len(),
        "one decision per request: {report:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_place_200_requests_across_leader_kills() {
    let etcd = common::start_etcd().await;
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Keys::default();
    let client = common::connect(&etcd).await;

    let mut replicas: Vec<Replica> = (1..=3)
        .map(|i| {
            Replica::start(
                &ep,
                &format!("replica-{i}"),
                dir.path(),
                &["--lease-ttl", LEASE_TTL],
            )
        })
        .collect();
    for i in 0..10 {
        let zone = if i % 2 == 0 { "zone=a" } else { "zone=b" };
        let out = cli(
            &ep,
            &[
                "engine",
                "add",
                &format!("engine-{i}"),
                "--addr",
                &format!("tcp://127.0.2.{i}:2375"),
                "--cpus",
                "4",
                "--memory",
                "8192",
                "--label",
                zone,
            ],
        );
        assert_eq!(out.0, 0, "engine add: {}", out.2);
    }

    // Every replica yields the cpu to etcd (`--nice`, 5 by default), in all of its threads.
    let want = (nice_of("self")[0] + 5).min(19);
    for r in &replicas {
        let nice = nice_of(&r.child.id().to_string());
        assert!(
            nice.len() > 1 && nice.iter().all(|n| *n == want),
            "{}: {nice:?}",
            r.id
        );
    }

    let mut revisions = BTreeMap::new();
    for i in 0..100 {
        let id = format!("req-{i:03}");
        revisions.insert(
            id.clone(),
            put_request(&client, &keys, &id, load_request(i)).await,
        );
    }

    // SIGKILL the leader mid-way; the next request tells how long the cluster was headless.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(l) = common::leader_id(&client, &keys).await {
            break l;
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let victim = replicas
        .iter()
        .position(|r| r.id == first)
        .expect("leader is a replica");
    let killed_at = Instant::now();
    replicas[victim].signal(Signal::KILL);
    let probe = "probe-after-sigkill";
    revisions.insert(
        probe.into(),
        put_request(&client, &keys, probe, load_request(1)).await,
    );
    for i in 100..200 {
        let id = format!("req-{i:03}");
        revisions.insert(
            id.clone(),
            put_request(&client, &keys, &id, load_request(i)).await,
        );
    }
    let after_kill = time_to_decision(
        &client,
        &keys,
        probe,
        &first,
        killed_at,
        Duration::from_secs(30),
    )
    .await;
    assert!(replicas[victim].wait_exit(Duration::from_secs(5)));
    replicas.remove(victim);
    assert_all_decided(&client, &keys, &revisions).await;

    // SIGTERM the new leader: it resigns, so the last replica should take over at once.
    let second = common::leader_id(&client, &keys)
        .await
        .expect("a leader after the kill");
    assert_ne!(second, first);
    let victim = replicas
        .iter()
        .position(|r| r.id == second)
        .expect("leader is a replica");
    let termed_at = Instant::now();
    replicas[victim].signal(Signal::TERM);
    let probe = "probe-after-sigterm";
    revisions.insert(
        probe.into(),
        put_request(&client, &keys, probe, load_request(2)).await,
    );
    let after_term = time_to_decision(
        &client,
        &keys,
        probe,
        &second,
        termed_at,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        replicas[victim].wait_exit(Duration::from_secs(10)),
        "SIGTERM must stop the replica cleanly"
    );
    let log = replicas[victim].log();
    assert!(
        log.contains("lease revoked"),
        "a terminated leader resigns:\n{log}"
    );
    replicas.remove(victim);
    assert_all_decided(&client, &keys, &revisions).await;

    let report = invariants::check_etcd(&client, &keys, 1.0)
        .await
        .expect("read");
    println!(
        "e2e: {} requests, {} placed, {} unschedulable, {} invalid; hand-over after SIGKILL {} ms, \
         after SIGTERM {} ms (lease TTL {LEASE_TTL} s)",
        revisions.len(),
        report.placed,
        report.unschedulable,
        report.invalid,
        after_kill.as_millis(),
        after_term.as_millis()
    );
    assert!(report.placed > 150, "most requests fit: {report:?}");

    // What one engine holds, as an operator lists it: one row per request placed there.
    let mut on_engine_0 = Vec::new();
    for id in revisions.keys() {
        if let Some(d) = decision(&client, &keys, id).await
            && d.status == Status::Placed
            && d.resource.as_ref().is_some_and(|r| r.id == "engine-0")
        {
            on_engine_0.push(id.clone());
        }
    }
    assert!(!on_engine_0.is_empty(), "spread uses every engine");
    let (code, shown, _) = cli(&ep, &["engine", "show", "engine-0"]);
    assert_eq!(code, 0, "{shown}");
    assert!(
        shown.contains(&format!("reserved by {} request(s)", on_engine_0.len())),
        "{shown}"
    );
    for id in &on_engine_0 {
        assert!(
            shown.lines().any(|l| l.starts_with(&format!("{id} "))),
            "{id} in:\n{shown}"
        );
    }
    let (code, _, stderr) = cli(&ep, &["engine", "rm", "engine-0"]);
    assert_ne!(code, 0, "an engine that holds placements stays");
    assert!(stderr.contains("still holds"), "{stderr}");
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leader_is_deposed_and_its_writes_are_refused() {
    let etcd = common::start_etcd().await;
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Keys::default();
    let client = common::connect(&etcd).await;
    let replicas: Vec<Replica> = (1..=2)
        .map(|i| {
            Replica::start(
                &ep,
                &format!("replica-{i}"),
                dir.path(),
                &["--lease-ttl", LEASE_TTL],
            )
        })
        .collect();
    let out = cli(
        &ep,
        &[
            "engine",
            "add",
            "e1",
            "--addr",
            "tcp://h:1",
            "--cpus",
            "2",
            "--memory",
            "1000",
        ],
    );
    assert_eq!(out.0, 0);
    let mut revisions = BTreeMap::new();
    revisions.insert(
        "a".to_string(),
        put_request(&client, &keys, "a", load_request(4)).await,
    );
    let d = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(d) = decision(&client, &keys, "a").await {
                break d;
            }
            assert!(Instant::now() < deadline, "a not decided");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    assert_eq!(d.status, Status::Placed);
    let paused = replicas
        .iter()
        .find(|r| r.id == d.decided_by)
        .expect("leader");
    paused.signal(Signal::STOP);
    // While it sleeps, its lease expires and the other replica takes over and decides.
    revisions.insert(
        "b".to_string(),
        put_request(&client, &keys, "b", load_request(4)).await,
    );
    let other = time_to_decision(
        &client,
        &keys,
        "b",
        &paused.id,
        Instant::now(),
        Duration::from_secs(30),
    )
    .await;
    paused.signal(Signal::CONT);
    // Give the old leader time to wake up, try, and notice.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = paused.log();
        if log.contains("stepped down") || log.contains("lease lost") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the paused leader never stepped down:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    revisions.insert(
        "c".to_string(),
        put_request(&client, &keys, "c", load_request(4)).await,
    );
    assert_all_decided(&client, &keys, &revisions).await;
    let c = decision(&client, &keys, "c").await.expect("c decided");
    assert_ne!(
        c.decided_by, paused.id,
        "the deposed leader must not decide"
    );
    println!(
        "e2e: a paused leader's successor decided after {} ms",
        other.as_millis()
    );
}

/// Steady, bounded load: `count` requests one every `pace`, every 7th rewritten and every 11th
/// deleted a little later. Returns each live request's final revision.
async fn load(client: Client, keys: Keys, count: usize, pace: Duration) -> BTreeMap<String, i64> {
    let mut live = BTreeMap::new();
    for i in 0..count {
        let id = format!("load-{i:04}");
        live.insert(
            id.clone(),
            put_request(&client, &keys, &id, load_request(i)).await,
        );
        if i >= 3 && (i - 3).is_multiple_of(7) {
            let again = format!("load-{:04}", i - 3);
            let body = load_request(i + 1);
            live.insert(
                again.clone(),
                put_request(&client, &keys, &again, body).await,
            );
        }
        if i >= 5 && (i - 5).is_multiple_of(11) {
            let gone = format!("load-{:04}", i - 5);
            common::delete_key(&client, keys.request(&common::rid(&gone))).await;
            live.remove(&gone);
        }
        tokio::time::sleep(pace).await;
    }
    live
}

/// Three replicas under load while each fault of the hostile-input issue is planted in turn: a
/// request of heavy regexes, one nested too deep, a misspelt field, a rewrite that stays
/// unschedulable, every decision deleted, an election key without a lease, an engine deleted
/// under its placements and one shrunk by hand, and the leader SIGKILLed. Afterwards `citadel
/// check` finds nothing: every live request has exactly one decision for its current revision,
/// no engine is over capacity, no port bound twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_under_load_survive_every_planted_fault() {
    let etcd = common::start_etcd().await;
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Keys::default();
    let client = common::connect(&etcd).await;
    for i in 0..6 {
        let zone = if i % 2 == 0 { "zone=a" } else { "zone=b" };
        common::put_engine(&client, &keys, &format!("e{i}"), 4.0, 8192.0, &[zone]).await;
    }
    let mut replicas: Vec<Replica> = (1..=3)
        .map(|i| {
            Replica::start(
                &ep,
                &format!("replica-{i}"),
                dir.path(),
                &["--lease-ttl", LEASE_TTL],
            )
        })
        .collect();
    let loader = tokio::spawn(load(
        client.clone(),
        keys.clone(),
        300,
        Duration::from_millis(15),
    ));
    let pause = || tokio::time::sleep(Duration::from_millis(400));

    // Hostile input beside the load.
    let heavy: Vec<String> = (0..150)
        .map(|i| format!("zone!=/^(\\w|\\d){{{}}}x{i}$/", 60 + i % 7))
        .collect();
    let hostile = [
        (
            "hostile-regex",
            serde_json::json!({"image":"x","cpus":0.1,"memory":1,"type":"service","labels":heavy})
                .to_string(),
        ),
        (
            "hostile-deep",
            format!(
                r#"{{"image":"x","cpus":0.1,"memory":1,"type":"service","user_data":{{"d":{}1{}}}}}"#,
                "[".repeat(5000),
                "]".repeat(5000)
            ),
        ),
        (
            "hostile-typo",
            r#"{"image":"x","cpus":0.1,"memory":1,"type":"service","lables":["zone==b"]}"#
                .to_string(),
        ),
    ];
    for (id, body) in &hostile {
        put_request(&client, &keys, id, body.as_str()).await;
    }
    pause().await;
    // A rewrite that stays unschedulable.
    let big = r#"{"image":"big","cpus":64,"memory":1,"type":"service"}"#;
    put_request(&client, &keys, "too-big", big).await;
    pause().await;
    put_request(
        &client,
        &keys,
        "too-big",
        big.replace("\"big\"", "\"bigger\""),
    )
    .await;
    pause().await;
    // Every decision deleted by an operator's slip.
    client
        .kv_client()
        .delete(
            keys.decisions(),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .expect("del --prefix decisions/");
    pause().await;
    // An election key without a lease.
    common::put_raw(&client, format!("{}/impostor", keys.leader()), "{}").await;
    pause().await;
    // An engine deleted under its placements, another shrunk by hand.
    common::delete_key(&client, keys.engine(&common::eid("e0"))).await;
    pause().await;
    common::put_engine(&client, &keys, "e1", 1.0, 8192.0, &["zone=b"]).await;
    pause().await;
    // The leader killed.
    let first = common::leader_id(&client, &keys).await.expect("a leader");
    let victim = replicas
        .iter()
        .position(|r| r.id == first)
        .expect("the leader is a replica");
    replicas[victim].signal(Signal::KILL);
    assert!(replicas[victim].wait_exit(Duration::from_secs(5)));
    replicas.remove(victim);

    let live = tokio::time::timeout(Duration::from_secs(60), loader)
        .await
        .expect("the load ends")
        .expect("the load task");
    let (code, stdout, stderr) = cli(&ep, &["check", "--settle", "30"]);
    assert_eq!(code, 0, "citadel check:\n{stdout}{stderr}");
    let mut want = live;
    for (id, _) in &hostile {
        let d = decision(&client, &keys, id).await.expect("decided");
        assert_eq!(d.status, Status::Invalid, "{id}: {d:?}");
        want.insert(id.to_string(), d.request_revision);
    }
    let d = decision(&client, &keys, "too-big").await.expect("decided");
    assert_eq!(d.status, Status::Unschedulable);
    assert_eq!(
        Some(d.request_revision),
        common::get(&client, &keys.request(&common::rid("too-big")))
            .await
            .map(|g| g.mod_revision),
        "the rewrite has its own decision"
    );
    assert!(
        common::get(&client, &format!("{}/impostor", keys.leader()))
            .await
            .is_none(),
        "the election key without a lease is gone"
    );
    let report = invariants::check_etcd(&client, &keys, 1.0)
        .await
        .expect("read etcd");
    assert_eq!(report.violations() + report.unsettled(), 0, "{report:#?}");
    assert_eq!(report.requests, want.len() + 1, "{report:#?}");
    for r in &replicas {
        assert!(r.log().contains("starting"), "{}", r.id);
    }
}

/// The leader compacts etcd's history on its timer once the history to drop is worth a scan
/// of the keys alive, in a task of its own: requests keep being decided meanwhile, and its
/// cache, whose watch may fall behind a compaction, loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_compacts_history_while_it_keeps_deciding() {
    let etcd = common::start_etcd().await;
    let client = common::connect(&etcd).await;
    let keys = Keys::default();
    common::put_engine(&client, &keys, "e1", 64.0, 65_536.0, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = common::ReplicaProcess::start(
        &etcd.endpoint(),
        "compactor",
        dir.path(),
        &["--compact-every", "1", "--compact-retain", "20"],
    );
    let first = put_request(&client, &keys, "r-000", load_request(0)).await;
    // 120 requests and their decisions: 241 keys alive, so a compaction is worth it once it
    // drops 60 revisions.
    for i in 1..120 {
        put_request(&client, &keys, &format!("r-{i:03}"), load_request(i)).await;
    }
    common::wait_until("the leader compacted", common::WAIT, || async {
        let at_first = client
            .kv_client()
            .get(
                "/",
                Some(etcd_client::GetOptions::new().with_revision(first)),
            )
            .await;
        matches!(at_first, Err(e) if e.to_string().contains("compacted"))
    })
    .await;
    assert!(
        replica.log().contains("compacted etcd history"),
        "{}",
        replica.log()
    );
    for i in 0..120 {
        let id = format!("r-{i:03}");
        common::wait_decision_where(&client, &keys, &id, common::WAIT, "decided", |_| true).await;
    }
    put_request(&client, &keys, "after", load_request(1)).await;
    common::wait_decision_where(&client, &keys, "after", common::WAIT, "placed", |d| {
        d.status == Status::Placed
    })
    .await;
    common::assert_invariants(&client, &keys).await;
}
