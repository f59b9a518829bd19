//! Scheduling features end to end (issue 16): a real etcd per test, a controller replica,
//! requests written as users write them, decisions read back from etcd, and the operator's
//! commands run through the real binary. Every test ends with the invariants check.

mod common;

use std::collections::BTreeSet;

use citadel::model::Status;
use common::*;
use etcd_client::Client;
use serde_json::json;

async fn placed(client: &Client, id: &str) -> String {
    let d = wait_decision_where(client, &keys(), id, WAIT, "placed", |d| {
        d.status == Status::Placed
    })
    .await;
    placed_engine(&d)
}

async fn refused(client: &Client, id: &str) -> String {
    wait_decision_where(client, &keys(), id, WAIT, "unschedulable", |d| {
        d.status == Status::Unschedulable
    })
    .await
    .reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_is_reserved_like_memory_and_refused_when_short() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine_json(
        &client,
        &keys,
        "big-disk",
        &json!({"addr": "tcp://a:2375", "cpus": 8, "memory": 8192, "disk": 1000.4}),
    )
    .await;
    put_engine(&client, &keys, "no-disk", 8.0, 8192.0, &[]).await;
    let _replica = Replica::start(&etcd, "r-disk");

    put_request(
        &client,
        &keys,
        "d1",
        request_json(0.1, 64, json!({"disk": 600})),
    )
    .await;
    assert_eq!(placed(&client, "d1").await, "big-disk");
    let held = reservations_for(&client, &keys, "d1").await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].1.disk, 600.0, "the reservation holds the disk");

    // 600 + 401 > 1000 (the engine's 1000.4 rounds down): nowhere has room.
    put_request(
        &client,
        &keys,
        "d2",
        request_json(0.1, 64, json!({"disk": 400.2})),
    )
    .await;
    let reason = refused(&client, "d2").await;
    assert!(reason.contains("2 insufficient disk"), "{reason}");

    // A request that asks for no disk goes anywhere.
    put_request(&client, &keys, "plain", request_json(0.1, 64, json!({}))).await;
    placed(&client, "plain").await;
    put_request(
        &client,
        &keys,
        "bad",
        request_json(0.1, 64, json!({"disk": -1})),
    )
    .await;
    let d = wait_decision(&client, &keys, "bad", WAIT).await;
    assert_eq!(d.status, Status::Invalid);
    assert!(d.reason.starts_with("disk:"), "{}", d.reason);
    assert_invariants(&client, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_volume_sticks_to_its_engine_until_it_is_forgotten() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    for e in ["e1", "e2", "e3"] {
        put_engine(&client, &keys, e, 2.0, 4096.0, &[]).await;
    }
    let _replica = Replica::start(&etcd, "r-vol");
    let with_volume = |cpus: f64| {
        request_json(
            cpus,
            64,
            json!({"volumes": ["pgdata:/var/lib/postgresql", "/scratch", "/host:/mnt"]}),
        )
    };

    // Three requests naming a new volume in one round all land where the first did.
    put_requests_together(
        &client,
        &keys,
        &(1..=3)
            .map(|i| (format!("pg-{i}"), with_volume(0.5)))
            .collect::<Vec<_>>(),
    )
    .await;
    let mut engines = BTreeSet::new();
    for i in 1..=3 {
        engines.insert(placed(&client, &format!("pg-{i}")).await);
    }
    assert_eq!(engines.len(), 1, "one volume, one engine: {engines:?}");
    let home = engines.into_iter().next().unwrap();
    let record = get_json(&client, &keys.volume("pgdata"))
        .await
        .expect("volumes/pgdata recorded");
    assert_eq!(record["engine"], json!(home));
    assert!(
        get(&client, &keys.volume("scratch")).await.is_none(),
        "anonymous volumes and bind mounts are not named volumes"
    );

    // Its engine is full: the next one is refused, naming the volume.
    put_request(&client, &keys, "pg-4", with_volume(1.0)).await;
    let reason = refused(&client, "pg-4").await;
    assert!(
        reason.contains(&format!("2 volume pgdata is on engine {home}")),
        "{reason}"
    );

    // Its requests go; the volume stays recorded, and the next one still goes there.
    for i in 1..=4 {
        delete_key(&client, keys.request(&rid(&format!("pg-{i}")))).await;
    }
    wait_until("the decisions are released", WAIT, || async {
        get_prefix(&client, &keys.decisions()).await.is_empty()
    })
    .await;
    assert!(get(&client, &keys.volume("pgdata")).await.is_some());
    put_request(&client, &keys, "pg-5", with_volume(0.5)).await;
    assert_eq!(placed(&client, "pg-5").await, home);

    // volume rm refuses while a placed request mounts it, then forgets it.
    let (code, _, err) = cli(&etcd.endpoint(), &["volume", "rm", "pgdata"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("mounted by placed request(s) pg-5"), "{err}");
    let (code, out, _) = cli(&etcd.endpoint(), &["volume", "ls"]);
    assert_eq!(code, 0);
    assert!(out.contains("pgdata") && out.contains(&home), "{out}");
    delete_key(&client, keys.request(&rid("pg-5"))).await;
    wait_until("pg-5 is released", WAIT, || async {
        get(&client, &keys.decision(&rid("pg-5"))).await.is_none()
    })
    .await;
    let (code, out, err) = cli(&etcd.endpoint(), &["volume", "rm", "pgdata"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("volume pgdata forgotten"), "{out}");
    assert!(get(&client, &keys.volume("pgdata")).await.is_none());
    assert_invariants(&client, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternatives_rank_the_next_engines_and_hold_nothing_there() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 4.0, 4096.0, &[]).await;
    put_engine(&client, &keys, "e2", 8.0, 8192.0, &[]).await;
    put_engine(&client, &keys, "e3", 16.0, 16384.0, &[]).await;
    put_engine(&client, &keys, "tiny", 0.5, 256.0, &[]).await;
    let _replica = Replica::start(&etcd, "r-alt");

    put_request(
        &client,
        &keys,
        "a",
        request_json(1.0, 512, json!({"alternatives": 2})),
    )
    .await;
    let d = wait_decision(&client, &keys, "a", WAIT).await;
    // spread: the engine least loaded once it is placed is the largest.
    assert_eq!(placed_engine(&d), "e3");
    let alts: Vec<&str> = d.alternatives.iter().map(|a| a.engine.as_str()).collect();
    assert_eq!(alts, ["e2", "e1"], "best first, without the chosen one");
    assert!(d.alternatives[0].score > d.alternatives[1].score);
    let held: Vec<String> = reservations(&client, &keys)
        .await
        .into_iter()
        .map(|(e, _, _)| e)
        .collect();
    assert_eq!(held, ["e3"], "only the chosen engine holds a reservation");

    put_request(
        &client,
        &keys,
        "too-many",
        request_json(1.0, 512, json!({"alternatives": 17})),
    )
    .await;
    let d = wait_decision(&client, &keys, "too-many", WAIT).await;
    assert_eq!(d.status, Status::Invalid);
    assert!(d.reason.contains("the limit is 16"), "{}", d.reason);
    assert_invariants(&client, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_means_engine_and_affinity_follows_placements_even_within_a_round() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    for e in ["n1", "n2", "n3", "n4"] {
        put_engine(&client, &keys, e, 4.0, 4096.0, &[]).await;
    }
    let _replica = Replica::start(&etcd, "r-aff");

    let pinned = |node: &str| request_json(0.1, 64, json!({"labels": [format!("node=={node}")]}));
    put_request(&client, &keys, "web-1", pinned("n2")).await;
    assert_eq!(placed(&client, "web-1").await, "n2");
    put_request(
        &client,
        &keys,
        "cache-1",
        request_json(
            0.1,
            64,
            json!({"image": "redis:7", "labels": ["node==/n[4]/"]}),
        ),
    )
    .await;
    assert_eq!(placed(&client, "cache-1").await, "n4");

    let affine = |expr: &[&str]| request_json(0.1, 64, json!({"affinity": expr}));
    put_request(&client, &keys, "sidecar", affine(&["request==web-*"])).await;
    assert_eq!(placed(&client, "sidecar").await, "n2");
    put_request(&client, &keys, "near-redis", affine(&["image==redis*"])).await;
    assert_eq!(placed(&client, "near-redis").await, "n4");
    put_request(&client, &keys, "nowhere", affine(&["request==db-*"])).await;
    let reason = refused(&client, "nowhere").await;
    assert!(reason.contains("4 affinity request==db-*"), "{reason}");
    put_request(&client, &keys, "soft", affine(&["request==~db-*"])).await;
    placed(&client, "soft").await;
    put_request(&client, &keys, "bad-key", affine(&["zone==a"])).await;
    let d = wait_decision(&client, &keys, "bad-key", WAIT).await;
    assert_eq!(d.status, Status::Invalid);
    assert!(d.reason.contains("affinity[0]"), "{}", d.reason);

    // Four anti-affine replicas decided in one round: never two on one engine.
    put_requests_together(
        &client,
        &keys,
        &(1..=4)
            .map(|i| (format!("ha-{i}"), affine(&["request!=ha-*"])))
            .collect::<Vec<_>>(),
    )
    .await;
    let mut on = BTreeSet::new();
    for i in 1..=4 {
        on.insert(placed(&client, &format!("ha-{i}")).await);
    }
    assert_eq!(on.len(), 4, "anti-affinity held within the round: {on:?}");
    put_request(&client, &keys, "ha-5", affine(&["request!=ha-*"])).await;
    let reason = refused(&client, "ha-5").await;
    assert!(reason.contains("4 affinity request!=ha-*"), "{reason}");
    assert_invariants(&client, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cordon_keeps_placements_and_drain_moves_services_but_not_batches() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 4.0, 4096.0, &[]).await;
    put_engine(&client, &keys, "e2", 4.0, 4096.0, &[]).await;
    let _replica = Replica::start(&etcd, "r-drain");
    let on_e1 =
        |kind: &str| request_json(0.5, 64, json!({"type": kind, "labels": ["engine==~e1"]}));
    put_request(&client, &keys, "svc", on_e1("service")).await;
    put_request(&client, &keys, "job", on_e1("batch")).await;
    put_request(
        &client,
        &keys,
        "stateful",
        request_json(
            0.5,
            64,
            json!({"labels": ["engine==e1"], "volumes": ["data:/d"]}),
        ),
    )
    .await;
    assert_eq!(placed(&client, "svc").await, "e1");
    assert_eq!(placed(&client, "job").await, "e1");
    assert_eq!(placed(&client, "stateful").await, "e1");

    let (code, out, err) = cli(&etcd.endpoint(), &["engine", "cordon", "e1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("cordoned"), "{out}");
    let engine = get_json(&client, &keys.engine(&eid("e1"))).await.unwrap();
    assert_eq!(
        engine["cordoned"],
        json!(true),
        "the flag is in the engine's key"
    );
    put_request(&client, &keys, "new", on_e1("service")).await;
    assert_eq!(
        placed(&client, "new").await,
        "e2",
        "a cordoned engine takes nothing new"
    );
    assert_eq!(
        placed(&client, "svc").await,
        "e1",
        "existing placements stay"
    );
    let (_, ls, _) = cli(&etcd.endpoint(), &["engine", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("e1") && l.contains("cordoned")),
        "{ls}"
    );

    let (code, out, err) = cli(&etcd.endpoint(), &["engine", "drain", "e1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 service placement(s)"), "{out}");
    let moved = wait_decision_where(&client, &keys, "svc", WAIT, "moved", |d| {
        d.status == Status::Placed && d.resource.as_ref().is_some_and(|r| r.id == "e2")
    })
    .await;
    assert!(
        moved.reason.contains("is being drained"),
        "{}",
        moved.reason
    );
    assert_eq!(
        placed(&client, "job").await,
        "e1",
        "a batch runs to the end"
    );
    assert_eq!(
        placed(&client, "stateful").await,
        "e1",
        "a service whose named volume lives there stays"
    );
    let (_, ls, _) = cli(&etcd.endpoint(), &["engine", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("e1 ") && l.contains("draining")),
        "{ls}"
    );
    delete_key(&client, keys.request(&rid("stateful"))).await;
    wait_until("e1 is drained", WAIT, || async {
        let (_, ls, _) = cli(&etcd.endpoint(), &["engine", "ls"]);
        ls.lines()
            .any(|l| l.starts_with("e1 ") && l.contains("drained"))
    })
    .await;

    let (code, _, err) = cli(&etcd.endpoint(), &["engine", "uncordon", "e1"]);
    assert_eq!(code, 0, "{err}");
    put_request(&client, &keys, "back", on_e1("service")).await;
    assert_eq!(placed(&client, "back").await, "e1");
    assert_invariants(&client, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binpack_leaves_the_engines_constrained_requests_need_for_last() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "ssd", 4.0, 4096.0, &["disk=ssd"]).await;
    put_engine(&client, &keys, "hdd-1", 4.0, 4096.0, &["disk=hdd"]).await;
    put_engine(&client, &keys, "hdd-2", 4.0, 4096.0, &["disk=hdd"]).await;
    let _replica = Replica::start(&etcd, "r-scarce");
    let fast = |n: u32| {
        (
            format!("fast-{n}"),
            request_json(1.0, 256, json!({"labels": ["disk==ssd"]})),
        )
    };

    put_request(&client, &keys, &fast(1).0, fast(1).1).await;
    assert_eq!(placed(&client, "fast-1").await, "ssd");
    // Binpack's fullest engine in use is the ssd one; but requests that can go only there
    // depend on it, so batches fill the others first.
    for n in 1..=6 {
        let id = format!("job-{n}");
        put_request(
            &client,
            &keys,
            &id,
            request_json(1.0, 256, json!({"type": "batch"})),
        )
        .await;
        let on = placed(&client, &id).await;
        assert_ne!(on, "ssd", "{id} took room only ssd requests can use");
    }
    // So the ssd requests that come later still find their room.
    for n in 2..=3 {
        put_request(&client, &keys, &fast(n).0, fast(n).1).await;
        assert_eq!(placed(&client, &fast(n).0).await, "ssd");
    }
    // Once the other engines are full, a batch takes the room that is left, needed or not.
    let mut last = Vec::new();
    for n in 7..=9 {
        let id = format!("job-{n}");
        put_request(
            &client,
            &keys,
            &id,
            request_json(1.0, 256, json!({"type": "batch"})),
        )
        .await;
        last.push(placed(&client, &id).await);
    }
    assert_eq!(last, ["hdd-2", "hdd-2", "ssd"]);
    assert_invariants(&client, &keys).await;
}
