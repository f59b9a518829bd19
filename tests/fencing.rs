//! Invariant 3: only the current leader's writes commit. A leader whose lease is cut is deposed
//! by etcd itself: its fenced transaction is refused even though it still holds its fence.
//! And invariant 1 across a race with an operator: a placement on an engine changed since it
//! was verified is refused too.

use std::time::Duration;

use citadel::election::{self, Candidate, Lease};
use citadel::keys::Keys;
use citadel::manager::{self, Batch, Item};
use citadel::model::{Decision, Held, MemoryMb, Millicpus, RequestId, Reservation, Status};
use citadel::store::fence::Commit;
use citadel_testkit::etcd::EtcdProcess;
use common::{eid, rid};
use etcd_client::Client;
use serde_json::json;
use tokio::sync::watch;

mod common;

fn placement(id: &RequestId, request_revision: i64, by: &str) -> Item {
    placement_fenced(id, request_revision, None, by)
}

fn placement_fenced(
    id: &RequestId,
    request_revision: i64,
    decision_fence: Option<i64>,
    by: &str,
) -> Item {
    placement_on(id, request_revision, decision_fence, by, "e1", 2)
}

/// A placement of `id` on `engine`, verified on the engine key as of `engine_revision`.
fn placement_on(
    id: &RequestId,
    request_revision: i64,
    decision_fence: Option<i64>,
    by: &str,
    engine: &str,
    engine_revision: i64,
) -> Item {
    let engine = eid(engine);
    Item::Place {
        id: id.clone(),
        decision_fence,
        engine: engine.clone(),
        engine_revision,
        agent: Default::default(),
        held: Held {
            cpus: Millicpus(100),
            memory: MemoryMb(10),
            disk: citadel::model::DiskMb(0),
            ports: vec![],
            image: "".into(),
            rank: Default::default(),
        },
        decision: Decision {
            container: serde_json::json!({}).into(),
            resource: None,
            reservation: Some(Reservation {
                cpus: 0.1,
                memory: 10.0,
                disk: 0.0,
                ports: vec![],
                image: String::new(),
                priority: 0,
                preemptible: true,
                group: String::new(),
                disruption_budget: None,
            }),
            status: Status::Placed,
            reason: String::new(),
            scheduler: "spread".into(),
            alternatives: Vec::new(),
            request_revision,
            decided_at: String::new(),
            decided_by: by.into(),
            run: None,
            preempted_by: String::new(),
            preempted: Vec::new(),
        },
        volumes: Vec::new(),
    }
}

fn one(keys: &Keys, item: Item) -> manager::Batch {
    manager::batches(
        vec![item],
        keys,
        manager::EngineFence {
            count: 1,
            newest: 2,
        },
        manager::MAX_TXN_OPS,
    )
    .0
    .pop()
    .expect("one batch")
}

/// A fresh etcd, a client of it, and the default keys.
async fn etcd() -> (EtcdProcess, Client, Keys) {
    let etcd = common::start_etcd().await;
    let client = common::connect(&etcd).await;
    (etcd, client, common::keys())
}

/// An engine of 4 cpus and 1000 MB, as an operator writes it; its mod revision.
async fn put_engine(client: &Client, keys: &Keys, id: &str) -> i64 {
    common::put_engine_json(client, keys, id, &json!({"cpus": 4, "memory": 1000})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposed_leader_cannot_commit() {
    let (etcd, client, keys) = etcd().await;
    let mut kv = client.kv_client();
    put_engine(&client, &keys, "e1").await;
    let id = rid("r1");
    let request_revision = common::put_request(
        &client,
        &keys,
        "r1",
        common::request_json(0.1, 10, json!({"image": "x"})),
    )
    .await;

    let (_tx, mut shutdown) = watch::channel(false);
    let lease_a = Lease::grant(&client, 2).await.unwrap();
    let a = election::campaign(
        &client,
        &keys,
        &Candidate::new("a"),
        &lease_a,
        &mut shutdown,
    )
    .await
    .expect("a is elected");

    // b campaigns and waits behind a.
    let lease_b = Lease::grant(&client, 2).await.unwrap();
    let (client_b, keys_b) = (client.clone(), keys.clone());
    let b = tokio::spawn(async move {
        let (_tx, mut shutdown) = watch::channel(false);
        let won = election::campaign(
            &client_b,
            &keys_b,
            &Candidate::new("b"),
            &lease_b,
            &mut shutdown,
        )
        .await;
        (won, lease_b)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_finished(), "b must wait while a leads");

    // Cut a's lease behind its back (as an expiry would): b wins.
    client.lease_client().revoke(lease_a.id).await.unwrap();
    let (won, _lease_b) = tokio::time::timeout(Duration::from_secs(10), b)
        .await
        .expect("b elected in time")
        .unwrap();
    let b = won.expect("b is elected");
    assert_ne!(a.fence, b.fence);

    // a still believes it leads and tries to commit: etcd refuses it.
    let refused = commit(
        &client,
        &a.fence,
        &one(&keys, placement(&id, request_revision, "a")),
    )
    .await
    .unwrap();
    assert_eq!(refused, Commit::Fenced);
    let decided = kv.get(keys.decision(&id), None).await.unwrap();
    assert!(
        decided.kvs().is_empty(),
        "a deposed leader's decision (and the reservation in it) must not land"
    );

    // The same write from the new leader commits.
    let done = commit(
        &client,
        &b.fence,
        &one(&keys, placement(&id, request_revision, "b")),
    )
    .await
    .unwrap();
    assert!(matches!(done, Commit::Done(_)), "{done:?}");

    // A retry after an unknown outcome compares the decision key: the first write landed, so
    // the retry is a conflict, not a second placement (and not a fence failure).
    let again = commit(
        &client,
        &b.fence,
        &one(&keys, placement_fenced(&id, request_revision, Some(0), "b")),
    )
    .await
    .unwrap();
    assert!(matches!(again, Commit::Conflict(_)), "{again:?}");
    drop(etcd);
}

/// Invariant 1 across a race: an engine an operator changes (shrinks) after the leader verified
/// a placement on it, and before the placement commits, fails the transaction instead of being
/// overcommitted. Both forms of the guard: a compare per engine placed on, and one compare over
/// the whole engines prefix when the cluster is no bigger than the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_changed_in_flight_refuses_the_placement() {
    let (etcd, client, keys) = etcd().await;
    let kv = client.kv_client();
    let mut revisions = Vec::new();
    for e in ["e1", "e2", "e3"] {
        revisions.push(put_engine(&client, &keys, e).await);
    }
    let (_tx, mut shutdown) = watch::channel(false);
    let lease = Lease::grant(&client, 5).await.unwrap();
    let leader = election::campaign(&client, &keys, &Candidate::new("a"), &lease, &mut shutdown)
        .await
        .expect("elected");
    let shrink = |e: &str| {
        let (mut kv, key) = (kv.clone(), keys.engine(&eid(e)));
        async move {
            kv.put(key, r#"{"cpus":0.05,"memory":5}"#, None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision()
        }
    };
    let batch = |items: Vec<Item>, newest: i64| {
        let (mut batches, unwritable) = manager::batches(
            items,
            &keys,
            manager::EngineFence { count: 3, newest },
            manager::MAX_TXN_OPS,
        );
        assert!(unwritable.is_empty());
        assert_eq!(batches.len(), 1);
        batches.pop().expect("one batch")
    };
    let decided = |id: RequestId| {
        let (mut kv, key) = (kv.clone(), keys.decision(&id));
        async move { !kv.get(key, None).await.unwrap().kvs().is_empty() }
    };

    // One engine of three placed on: its own compare.
    let r1 = rid("r1");
    let on_e1 = |rev| batch(vec![placement_on(&r1, 1, None, "a", "e1", rev)], rev);
    let verified = on_e1(revisions[0]);
    let e1_now = shrink("e1").await;
    let refused = commit(&client, &leader.fence, &verified).await.unwrap();
    assert!(matches!(refused, Commit::Conflict(_)), "{refused:?}");
    assert!(!decided(r1.clone()).await, "placed on a shrunk engine");
    // Verified again on the engine as it is now, it commits.
    let done = commit(&client, &leader.fence, &on_e1(e1_now))
        .await
        .unwrap();
    assert!(matches!(done, Commit::Done(_)), "{done:?}");

    // Every engine placed on: one compare over the prefix, which any engine's change fails.
    let ids: Vec<RequestId> = (2..5).map(|i| rid(&format!("r{i}"))).collect();
    let current = [e1_now, revisions[1], revisions[2]];
    let verified = batch(
        ids.iter()
            .zip(["e1", "e2", "e3"])
            .zip(current)
            .map(|((id, e), rev)| placement_on(id, 1, None, "a", e, rev))
            .collect(),
        e1_now,
    );
    shrink("e3").await;
    let refused = commit(&client, &leader.fence, &verified).await.unwrap();
    assert!(matches!(refused, Commit::Conflict(_)), "{refused:?}");
    for id in ids {
        assert!(
            !decided(id.clone()).await,
            "{id} placed beside a shrunk engine"
        );
    }
    drop(etcd);
}

/// Commits a batch as the leader does.
async fn commit(
    client: &etcd_client::Client,
    fence: &citadel::store::fence::Fence,
    batch: &Batch,
) -> Result<Commit, citadel::store::StoreError> {
    citadel::store::fence::commit(client, fence, &batch.compares, &batch.ops).await
}
