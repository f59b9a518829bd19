//! Recovery after etcd itself goes away: a restart on the same data (the leader rides it out
//! and decides again soon after), and the operator's disaster recovery, a restore from a
//! snapshot (etcd's revision goes back: every replica notices, lists again and carries on).
//!
//! Everything runs for real: etcd is SIGKILLed and started again, `etcdctl snapshot save` and
//! `etcdctl snapshot restore` are the operator's own commands, and the controller is the real
//! binary.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use citadel::model::Status;
use citadel_testkit::child::Signal;
use citadel_testkit::etcd::EtcdProcess;
use common::*;
use etcd_client::Client;
use serde_json::json;
use tokio::time::Instant;

/// How long etcd stays down in the restart test: long enough for a backoff to grow to any
/// ceiling, and beyond the leader's cut-off (twice its 5 s lease TTL without an answer), so
/// that it steps down and gives its lease up while etcd is away.
const DOWN: Duration = Duration::from_secs(12);

/// The leading election key: its name (the lease's id is in it) and its create revision,
/// which every fenced write of that leadership compares.
async fn leading_key(client: &Client) -> Option<(String, i64)> {
    let opts = etcd_client::GetOptions::new()
        .with_prefix()
        .with_sort(
            etcd_client::SortTarget::Create,
            etcd_client::SortOrder::Ascend,
        )
        .with_limit(1);
    let got = client
        .kv_client()
        .get(keys().leader(), Some(opts))
        .await
        .ok()?;
    got.kvs().first().map(|kv| {
        (
            String::from_utf8_lossy(kv.key()).into_owned(),
            kv.create_revision(),
        )
    })
}

/// Puts `count` small requests named `<prefix>-<i>`; returns each id with its revision.
async fn put_many(client: &Client, prefix: &str, count: usize) -> BTreeMap<String, i64> {
    let keys = keys();
    let mut want = BTreeMap::new();
    for i in 0..count {
        let id = format!("{prefix}-{i}");
        let rev = put_request(client, &keys, &id, request_json(0.1, 16, json!({}))).await;
        want.insert(id, rev);
    }
    want
}

/// Puts a request, retrying while etcd is not answering yet (bounded); returns its revision.
async fn put_when_up(client: &Client, id: &str) -> i64 {
    let keys = keys();
    let key = keys.request(&rid(id));
    let value = request_json(0.1, 16, json!({}));
    let deadline = Instant::now() + WAIT;
    loop {
        let put = tokio::time::timeout(
            Duration::from_secs(2),
            client.kv_client().put(key.clone(), value.clone(), None),
        )
        .await;
        match put {
            Ok(Ok(r)) => return r.header().map_or(0, |h| h.revision()),
            other if Instant::now() >= deadline => panic!("put {id}: {other:?}"),
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

fn all_placed(decided: &BTreeMap<String, Decided>) {
    for (id, d) in decided {
        assert_eq!(d.decision.status, Status::Placed, "{id}: {:?}", d.decision);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_leader_decides_soon_after_etcd_restarts() {
    let mut etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 100.0, 100_000.0, &[]).await;
    let replica = ReplicaProcess::start(&etcd.endpoint(), "replica-1", etcd.scratch_dir(), &[]);
    put_request(&client, &keys, "warmup", request_json(0.1, 16, json!({}))).await;
    wait_decision(&client, &keys, "warmup", WAIT).await;
    let led = leading_key(&client).await.expect("replica-1 leads");

    etcd.kill().await;
    tokio::time::sleep(DOWN).await;
    etcd.restart().await.expect("restart etcd");
    // etcd is healthy again (restart waits for it): from here to the first decision.
    let healthy = Instant::now();
    let rev = put_when_up(&client, "after").await;
    let d = wait_decision_where(
        &client,
        &keys,
        "after",
        Duration::from_secs(60),
        "the decision on the request written after the restart",
        |d| d.request_revision == rev,
    )
    .await;
    let took = healthy.elapsed();
    println!("first decision {took:?} after etcd was healthy again (etcd down {DOWN:?})");
    assert_eq!(d.status, Status::Placed, "{d:?}");
    wait_until("replica-1 leads", WAIT, || async {
        leader_id(&client, &keys).await.as_deref() == Some("replica-1")
    })
    .await;
    // It kept its place: the lease it gave up while etcd was away was still etcd's, and it
    // took it up again, rather than wait for it to expire behind a new one.
    assert_eq!(
        leading_key(&client).await,
        Some(led),
        "the leader's election key after the restart; log: {}",
        replica.log()
    );
    assert_invariants(&client, &keys).await;
}

/// `etcdctl snapshot save` into the scratch dir; returns the snapshot's path.
async fn snapshot_save(etcd: &EtcdProcess) -> std::path::PathBuf {
    let path = etcd.scratch_dir().join("backup.db");
    let file = path.to_string_lossy().into_owned();
    run_ok_in(
        etcd.scratch_dir(),
        "etcdctl",
        &["--endpoints", &etcd.endpoint(), "snapshot", "save", &file],
    )
    .await;
    path
}

/// The operator's restore: etcd stopped, `etcdctl snapshot restore` into a new data dir, etcd
/// started again on it, on the same address.
async fn snapshot_restore(etcd: &mut EtcdProcess, snapshot: &Path) {
    etcd.kill().await;
    let restored = etcd.scratch_dir().join("restored");
    let (snap, dir) = (
        snapshot.to_string_lossy().into_owned(),
        restored.to_string_lossy().into_owned(),
    );
    let (name, peer) = (etcd.name().to_string(), etcd.peer_url());
    let (cluster, token) = (
        etcd.initial_cluster().to_string(),
        etcd.cluster_token().to_string(),
    );
    run_ok_in(
        etcd.scratch_dir(),
        "etcdctl",
        &[
            "snapshot",
            "restore",
            &snap,
            "--data-dir",
            &dir,
            "--name",
            &name,
            "--initial-cluster",
            &cluster,
            "--initial-cluster-token",
            &token,
            "--initial-advertise-peer-urls",
            &peer,
        ],
    )
    .await;
    etcd.restart_on(restored)
        .await
        .expect("start the restored etcd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_from_a_snapshot_is_noticed_and_the_cluster_goes_on() {
    let mut etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 100.0, 100_000.0, &[]).await;
    let replica = ReplicaProcess::start(&etcd.endpoint(), "replica-1", etcd.scratch_dir(), &[]);
    let before = put_many(&client, "before", 5).await;
    all_placed(&wait_all_decided(&client, &keys, &before, WAIT).await);

    // Requests in the backup without their decisions: the controller is frozen while the
    // snapshot is taken, and decides them only after it.
    replica.signal(Signal::STOP);
    let pending = put_many(&client, "pending", 3).await;
    let snapshot = snapshot_save(&etcd).await;
    replica.signal(Signal::CONT);
    all_placed(&wait_all_decided(&client, &keys, &pending, WAIT).await);
    // More work after the backup, lost with the restore; etcd's revision then goes back by
    // more than this.
    let lost = put_many(&client, "lost", 20).await;
    all_placed(&wait_all_decided(&client, &keys, &lost, WAIT).await);

    snapshot_restore(&mut etcd, &snapshot).await;
    let mut want = pending.clone();
    for i in 0..5 {
        let id = format!("after-{i}");
        let rev = put_when_up(&client, &id).await;
        want.insert(id, rev);
    }
    // The requests written after the restore, and those the restore took the decisions of.
    let decided = wait_all_decided(&client, &keys, &want, Duration::from_secs(30)).await;
    all_placed(&decided);
    assert!(
        get(&client, &keys.request(&rid("lost-0"))).await.is_none(),
        "the restore took the requests written after the backup"
    );

    let (code, out, err) = cli(&etcd.endpoint(), &["check"]);
    assert_eq!(code, 0, "citadel check after the restore: {out}{err}");
    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.placed, before.len() + want.len(), "{report:#?}");
    let log = replica.log();
    let said = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("etcd went back in time"))
        .count();
    assert_eq!(said, 1, "the restore is logged loudly, once: {log}");
}

/// etcd takes the leader's lease away (an operator's `etcdctl lease revoke`, or etcd #12528 on a
/// raft leader that stalled): the leader steps down, cannot revoke what etcd no longer has, and
/// must not then wait to take that lease up again: it campaigns on a new one and decides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_etcd_took_away_campaigns_on_a_new_one_and_decides() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 100.0, 100_000.0, &[]).await;
    let replica = ReplicaProcess::start(&etcd.endpoint(), "replica-1", etcd.scratch_dir(), &[]);
    put_request(&client, &keys, "warmup", request_json(0.1, 16, json!({}))).await;
    wait_decision(&client, &keys, "warmup", WAIT).await;
    let opts = etcd_client::GetOptions::new().with_prefix();
    let got = client
        .kv_client()
        .get(keys.leader(), Some(opts))
        .await
        .expect("read the election");
    let lease = got
        .kvs()
        .first()
        .map(|kv| kv.lease())
        .expect("a leader key");
    client
        .lease_client()
        .revoke(lease)
        .await
        .expect("revoke the leader's lease");
    let rev = put_request(&client, &keys, "after", request_json(0.1, 16, json!({}))).await;
    let d = wait_decision_where(
        &client,
        &keys,
        "after",
        WAIT,
        "a decision after the leader's lease was revoked",
        |d| d.request_revision == rev,
    )
    .await;
    assert_eq!(d.status, Status::Placed, "{d:?}; log: {}", replica.log());
    let led = leading_key(&client).await.expect("a leader again");
    assert!(
        !led.0.ends_with(&format!("{lease:x}")),
        "it leads on a new lease, not the revoked {lease:x}"
    );
    assert_invariants(&client, &keys).await;
}
