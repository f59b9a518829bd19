//! A rolling upgrade changes no answer (invariant 6): while a replica of an older release
//! leads, a request that uses a field only a newer candidate knows is left to that candidate,
//! which places it; it is never decided `invalid`. A field no candidate knows is still a typo.
//!
//! One build plays both releases: the older replica is started with the hidden switch
//! `--forget-request-field affinity`, so it parses requests as a release before `affinity`.
//! Real etcd, real binaries.

use citadel::model::{Decision, Status};
use serde_json::json;

mod common;
use common::*;

/// The decision key of `id` and how many times it was written.
async fn written(client: &etcd_client::Client, id: &str) -> Option<(Decision, i64)> {
    let key = keys().decision(&rid(id));
    let got = client.kv_client().get(key, None).await.ok()?;
    let kv = got.kvs().first()?;
    Some((serde_json::from_slice(kv.value()).ok()?, kv.version()))
}

/// How many campaign keys there are.
async fn candidates(client: &etcd_client::Client) -> usize {
    get_prefix(client, &format!("{}/", keys().leader()))
        .await
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_leader_leaves_a_newer_field_to_a_newer_replica_and_a_typo_stays_invalid() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 4.0, 4096.0, &[]).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let endpoint = etcd.endpoint();

    // The older release alone: nobody knows `affinity`, so it is a typo as far as it can tell.
    let old = ReplicaProcess::start(
        &endpoint,
        "old",
        dir.path(),
        &["--forget-request-field", "affinity"],
    );
    assert_eq!(wait_leader(&client, &keys, WAIT).await, "old");
    let affine =
        |id: &str| request_json(0.5, 64, json!({ "affinity": [format!("request!={id}-*")] }));
    put_request(&client, &keys, "alone", affine("alone")).await;
    let d = wait_decision(&client, &keys, "alone", WAIT).await;
    assert_eq!(d.status, Status::Invalid, "{d:?}");
    assert!(
        d.reason.contains("unknown field \"affinity\""),
        "{}",
        d.reason
    );

    // A newer replica joins; the older one still leads.
    let new = ReplicaProcess::start(&endpoint, "new", dir.path(), &[]);
    wait_until("the newer replica campaigns", WAIT, || async {
        candidates(&client).await == 2
    })
    .await;
    assert_eq!(leader_id(&client, &keys).await.as_deref(), Some("old"));

    // The request with the newer field: the older leader hands over, the newer one places it.
    put_request(&client, &keys, "uses-affinity", affine("uses-affinity")).await;
    let d = wait_decision(&client, &keys, "uses-affinity", WAIT).await;
    assert_eq!(d.status, Status::Placed, "{d:?}\nold:\n{}", old.log());
    assert_eq!(d.decided_by, "new");
    let (_, writes) = written(&client, "uses-affinity")
        .await
        .expect("its decision");
    assert_eq!(writes, 1, "decided once, never invalid first");
    assert!(
        old.log().contains("handing leadership over"),
        "{}",
        old.log()
    );
    assert_eq!(wait_leader(&client, &keys, WAIT).await, "new");
    // The older replica stays on as a candidate behind it.
    wait_until("the older replica campaigns again", WAIT, || async {
        candidates(&client).await == 2
    })
    .await;

    // A field no candidate knows is a typo, and invalid with its did-you-mean.
    let typo = request_json(0.5, 64, json!({ "lables": ["zone==a"] }));
    put_request(&client, &keys, "typo", typo).await;
    let d = wait_decision(&client, &keys, "typo", WAIT).await;
    assert_eq!(d.status, Status::Invalid);
    assert!(
        d.reason.contains("\"lables\" (did you mean \"labels\"?)"),
        "{}",
        d.reason
    );

    // Each replica's version shows in `citadel leader`.
    let (code, out, err) = cli(&endpoint, &["leader", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let election: serde_json::Value = serde_json::from_str(&out).expect("json");
    let versions: Vec<&str> = election["candidates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["version"].as_str())
        .collect();
    assert_eq!(versions, [env!("CARGO_PKG_VERSION"); 2], "{out}");
    let (_, table, _) = cli(&endpoint, &["leader"]);
    assert!(table.contains("VERSION"), "{table}");
    assert_invariants(&client, &keys).await;
    drop(new);
    drop(old);
}

/// Issue 24's fields during a rolling upgrade: a release before priorities and gangs leads,
/// a newer replica joins; a gang's members and an urgent request are left to the newer one,
/// which places the gang whole and preempts for the urgent request. Nothing is ever decided
/// `invalid`, and the victim is `preempted`, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_leader_leaves_priorities_and_gangs_to_a_newer_replica() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 4.0, 4096.0, &[]).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let endpoint = etcd.endpoint();
    let mut forget = Vec::new();
    for field in [
        "priority",
        "preemptible",
        "group",
        "group_min",
        "group_timeout",
        "spread",
        "max_per_engine",
        "disruption_budget",
    ] {
        forget.extend(["--forget-request-field", field]);
    }
    let old = ReplicaProcess::start(&endpoint, "old", dir.path(), &forget);
    assert_eq!(wait_leader(&client, &keys, WAIT).await, "old");
    // The older release fills the engine with requests it understands.
    for id in ["plain-0", "plain-1"] {
        put_request(&client, &keys, id, request_json(1.0, 64, json!({}))).await;
        let d = wait_decision(&client, &keys, id, WAIT).await;
        assert_eq!(d.status, Status::Placed, "{d:?}");
    }
    let new = ReplicaProcess::start(&endpoint, "new", dir.path(), &[]);
    wait_until("the newer replica campaigns", WAIT, || async {
        candidates(&client).await == 2
    })
    .await;

    // A gang of two (it fits in what is left) and an urgent request that must preempt.
    let member = request_json(1.0, 64, json!({"group": "g", "group_min": 2}));
    for id in ["g-0", "g-1"] {
        put_request(&client, &keys, id, member.clone()).await;
    }
    for id in ["g-0", "g-1"] {
        let d = wait_decision_where(&client, &keys, id, WAIT, "placed", |d| {
            d.status == Status::Placed
        })
        .await;
        assert_eq!(d.decided_by, "new", "{d:?}\nold:\n{}", old.log());
        let (_, writes) = written(&client, id).await.expect("its decision");
        assert_eq!(writes, 1, "{id} decided once, never invalid first");
    }
    put_request(
        &client,
        &keys,
        "urgent",
        request_json(1.0, 64, json!({"priority": 10})),
    )
    .await;
    let d = wait_decision_where(&client, &keys, "urgent", WAIT, "placed", |d| {
        d.status == Status::Placed
    })
    .await;
    assert_eq!(d.preempted.len(), 1, "{d:?}");
    let victim = &d.preempted[0];
    assert!(
        victim.starts_with("plain-"),
        "a gang is never preempted: {d:?}"
    );
    let v = wait_decision(&client, &keys, victim, WAIT).await;
    assert_eq!(v.status, Status::Preempted, "{v:?}");
    assert!(
        old.log().contains("handing leadership over"),
        "{}",
        old.log()
    );
    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.invalid, 0, "{report:?}");
    drop(new);
    drop(old);
}
