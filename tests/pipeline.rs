//! The request pipeline end to end, in process: a real etcd per test, one or two controller
//! replicas on tokio, requests written as a user writes them and decisions read back raw.
//!
//! Every test asserts the behaviour it is named for and ends with the invariants check
//! (no overcommit, no double-bound port, one reservation per placed decision).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use citadel::cache::Cache;
use citadel::keys::Keys;
use citadel::manager::Ledger;
use citadel::model::Status;
use citadel_testkit::etcd::EtcdProcess;
use common::*;
use etcd_client::{Client, CompactionOptions};
use serde_json::json;
use tokio::sync::watch;

fn placed(d: &citadel::model::Decision) -> bool {
    d.status == Status::Placed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_sample_request_gets_a_seed_shaped_decision() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    let engines = BTreeMap::from([
        (
            "e1".to_string(),
            put_engine(&client, &keys, "e1", 4.0, 4096.0, &[]).await,
        ),
        (
            "e2".to_string(),
            put_engine(&client, &keys, "e2", 8.0, 8192.0, &["zone=b"]).await,
        ),
    ]);
    let replica = Replica::start(&etcd, "replica-seed");

    // README's etcdctl sample ("Asking for a container with etcdctl"), byte for byte: note
    // `cpus` is a string.
    let sample =
        r#"{"image": "crosbymichael/redis", "cpus": "0.2", "memory": 512, "type": "service"}"#;
    let rev = put_request(&client, &keys, "redis-1", sample).await;
    wait_decision(&client, &keys, "redis-1", WAIT).await;

    let decision = get_json(&client, &keys.decision(&rid("redis-1")))
        .await
        .expect("decision key");
    let written: serde_json::Value = serde_json::from_str(sample).unwrap();
    assert_eq!(
        decision["container"], written,
        "container echoes the request as written"
    );
    assert_eq!(
        decision["container"]["cpus"],
        json!("0.2"),
        "cpus stays a string"
    );
    assert_eq!(decision["status"], json!("placed"), "{decision:#}");
    assert_eq!(decision["decided_by"], json!("replica-seed"));
    assert_eq!(decision["request_revision"], json!(rev));

    let resource = &decision["resource"];
    let engine = resource["id"].as_str().expect("resource.id").to_string();
    let spec = engines
        .get(&engine)
        .unwrap_or_else(|| panic!("placed on unknown engine {engine}"));
    assert_eq!(resource["addr"], spec["addr"]);
    assert_eq!(resource["total_cpus"].as_f64(), spec["cpus"].as_f64());
    assert_eq!(resource["total_memory"].as_f64(), spec["memory"].as_f64());

    // The request key itself is left exactly as the user wrote it.
    let request = get(&client, &keys.request(&rid("redis-1"))).await.unwrap();
    assert_eq!(request.value, sample.as_bytes());

    // What the placement holds is in the decision, readable with etcdctl.
    let reservation = &decision["reservation"];
    assert_eq!(reservation["cpus"].as_f64(), Some(0.2), "{decision:#}");
    assert_eq!(reservation["memory"].as_f64(), Some(512.0), "{decision:#}");
    assert_eq!(reservations(&client, &keys).await.len(), 1);

    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.placed, 1);
    replica.stop().await;
}

/// The label test's engines, 16 cpus and 16 GB each, with their labels. `ee` is labelled as
/// `ea` is: one scheduling class, told apart only by their own engine label.
const LABELLED_ENGINES: &[(&str, &[&str])] = &[
    ("ea", &["zone=a", "region=eu-west"]),
    ("eb", &["zone=b", "region=us-east"]),
    ("ec", &["zone=x", "region=eu-south"]),
    ("ed", &["zone=d", "region=eu-north"]),
    ("ee", &["zone=a", "region=eu-west"]),
];

/// (request id, constraints, engines it may land on)
const LABEL_CASES: &[(&str, &[&str], &[&str])] = &[
    ("zone-b", &["zone==b"], &["eb"]),
    ("not-zone-a", &["zone!=a"], &["eb", "ec", "ed"]),
    ("region-glob", &["region==eu-*"], &["ea", "ec", "ed", "ee"]),
    (
        "region-regex",
        &["region==/^eu-(west|north)$/"],
        &["ea", "ed", "ee"],
    ),
    ("zone-a-not-ea", &["zone==a", "engine!=ea"], &["ee"]),
    (
        "all-of",
        &["region==eu-*", "zone!=a", "region!=eu-north"],
        &["ec"],
    ),
    ("soft-met", &["zone==~b"], &["eb"]),
    ("soft-unmet", &["zone==~c"], &["ea", "eb", "ec", "ed", "ee"]),
    ("pinned", &["engine==ed"], &["ed"]),
];

/// The request whose hard constraint no engine meets.
const HARD_ZONE_C: &str = "hard-zone-c";

/// The label test's world: the [`LABELLED_ENGINES`] and one replica.
/// Fields drop in order: the replica, then etcd.
struct Labelled {
    replica: Replica,
    client: Client,
    keys: Keys,
    etcd: EtcdProcess,
}

impl Labelled {
    async fn start() -> Labelled {
        let etcd = start_etcd().await;
        let client = connect(&etcd).await;
        let keys = keys();
        for (id, labels) in LABELLED_ENGINES {
            put_engine(&client, &keys, id, 16.0, 16384.0, labels).await;
        }
        Labelled {
            replica: Replica::start(&etcd, "replica-labels"),
            client,
            keys,
            etcd,
        }
    }

    /// Every one of the [`LABEL_CASES`], then [`HARD_ZONE_C`].
    async fn submit_every_case_and_one_no_engine_meets(&self) {
        for (id, labels, _) in LABEL_CASES {
            let body = request_json(0.5, 64, json!({ "labels": labels }));
            put_request(&self.client, &self.keys, id, body).await;
        }
        put_request(
            &self.client,
            &self.keys,
            HARD_ZONE_C,
            request_json(0.5, 64, json!({ "labels": ["zone==c"] })),
        )
        .await;
    }

    /// Each case is placed on an engine it allows, and holds one reservation, there.
    async fn every_case_lands_on_an_engine_it_allows_and_is_held_there(&self) {
        for (id, labels, allowed) in LABEL_CASES {
            let d = wait_decision(&self.client, &self.keys, id, WAIT).await;
            assert_eq!(d.status, Status::Placed, "{id} {labels:?}: {d:?}");
            let engine = placed_engine(&d);
            assert!(
                allowed.contains(&engine.as_str()),
                "{id} with {labels:?} landed on {engine}, allowed {allowed:?}"
            );
            let held = reservations_for(&self.client, &self.keys, id).await;
            assert_eq!(held.len(), 1, "{id}: {held:?}");
            assert_eq!(held[0].0, engine, "{id}: reservation on the decided engine");
        }
    }

    async fn an_unmet_soft_constraint_is_dropped_and_says_so(&self) {
        let soft = wait_decision(&self.client, &self.keys, "soft-unmet", WAIT).await;
        assert!(
            soft.reason.contains("soft constraints ignored"),
            "an unmet soft constraint is dropped and says so: {:?}",
            soft.reason
        );
    }

    /// [`HARD_ZONE_C`] is unschedulable, holds nothing, and its reason names the constraint.
    async fn a_hard_constraint_no_engine_meets_is_unschedulable_and_says_why(&self) {
        let hard = wait_decision(&self.client, &self.keys, HARD_ZONE_C, WAIT).await;
        assert_eq!(hard.status, Status::Unschedulable, "{hard:?}");
        assert!(hard.resource.is_none(), "{hard:?}");
        assert!(
            hard.reason.starts_with("0/5 engines fit:"),
            "reason {:?}",
            hard.reason
        );
        assert!(
            hard.reason.contains("constraint zone==c"),
            "reason {:?}",
            hard.reason
        );
        assert!(
            reservations_for(&self.client, &self.keys, HARD_ZONE_C)
                .await
                .is_empty()
        );
    }

    /// The invariants hold, with every case placed and one unschedulable.
    async fn the_invariants_hold(&self) {
        let report = assert_invariants(&self.client, &self.keys).await;
        assert_eq!(report.placed, LABEL_CASES.len());
        assert_eq!(report.unschedulable, 1);
    }

    /// Stops the replica, then etcd.
    async fn stop(self) {
        self.replica.stop().await;
        drop(self.etcd);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_constraints_pick_matching_engines() {
    let w = Labelled::start().await;
    w.submit_every_case_and_one_no_engine_meets().await;
    w.every_case_lands_on_an_engine_it_allows_and_is_held_there()
        .await;
    w.an_unmet_soft_constraint_is_dropped_and_says_so().await;
    w.a_hard_constraint_no_engine_meets_is_unschedulable_and_says_why()
        .await;
    w.the_invariants_hold().await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_ports_are_exclusive_per_engine() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 8.0, 8192.0, &[]).await;
    put_engine(&client, &keys, "e2", 8.0, 8192.0, &[]).await;
    let replica = Replica::start(&etcd, "replica-ports");

    let ids = ["web-1", "web-2", "web-3"];
    for id in ids {
        let body = request_json(0.1, 64, json!({ "bind_ports": [{ "port": 8080 }] }));
        put_request(&client, &keys, id, body).await;
    }
    let mut engines = BTreeSet::new();
    let mut refused = Vec::new();
    for id in ids {
        let d = wait_decision(&client, &keys, id, WAIT).await;
        match d.status {
            Status::Placed => assert!(
                engines.insert(placed_engine(&d)),
                "8080/tcp bound twice on {}",
                placed_engine(&d)
            ),
            Status::Unschedulable => refused.push(d),
            _ => panic!("{id}: {d:?}"),
        }
    }
    assert_eq!(engines.len(), 2, "two placed, one per engine: {engines:?}");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].reason.contains("port 8080/tcp in use"),
        "reason {:?}",
        refused[0].reason
    );
    assert!(refused[0].reason.starts_with("0/2 engines fit:"));

    // The same number over udp is another port.
    let body = request_json(
        0.1,
        64,
        json!({ "bind_ports": [{ "port": 8080, "proto": "udp" }] }),
    );
    put_request(&client, &keys, "dns-1", body).await;
    let d = wait_decision(&client, &keys, "dns-1", WAIT).await;
    assert_eq!(d.status, Status::Placed, "{d:?}");

    let held = reservations(&client, &keys).await;
    let tcp_8080: Vec<&String> = held
        .iter()
        .filter(|(_, _, r)| r.ports.iter().any(|p| p.port == 8080 && p.proto == "tcp"))
        .map(|(e, _, _)| e)
        .collect();
    assert_eq!(tcp_8080.len(), 2, "{held:?}");
    assert_ne!(tcp_8080[0], tcp_8080[1]);

    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.placed, 3);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_request_is_placed_when_capacity_frees() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 1.0, 1024.0, &[]).await;
    let replica = Replica::start(&etcd, "replica-frees");

    put_request(&client, &keys, "a", request_json(1.0, 128, json!({}))).await;
    let a = wait_decision(&client, &keys, "a", WAIT).await;
    assert_eq!(a.status, Status::Placed, "{a:?}");

    put_request(&client, &keys, "b", request_json(1.0, 128, json!({}))).await;
    let b = wait_decision(&client, &keys, "b", WAIT).await;
    assert_eq!(b.status, Status::Unschedulable, "{b:?}");
    assert!(
        b.reason.contains("insufficient cpus"),
        "reason {:?}",
        b.reason
    );
    assert_invariants(&client, &keys).await;

    // Releasing A frees the engine: B is retried without anyone touching it.
    delete_key(&client, keys.request(&rid("a"))).await;
    let b = wait_decision_where(&client, &keys, "b", WAIT, "placed decision", placed).await;
    assert_eq!(placed_engine(&b), "e1");
    assert!(get(&client, &keys.decision(&rid("a"))).await.is_none());
    assert!(reservations_for(&client, &keys, "a").await.is_empty());
    assert_eq!(reservations_for(&client, &keys, "b").await.len(), 1);

    let report = assert_invariants(&client, &keys).await;
    assert_eq!((report.placed, report.decided), (1, 1));
    replica.stop().await;
}

/// The parked set through the real pipeline: refused requests are not looked at again for a
/// change that cannot fit them (their reasons still count the engines as they were), a release
/// brings back the oldest that fit, and the one left over is placed at the next release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_requests_wait_for_room_that_fits_them_and_the_oldest_go_first() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 2.0, 4096.0, &[]).await;
    let replica = Replica::start(&etcd, "replica-parks");
    put_request(&client, &keys, "holder", request_json(2.0, 128, json!({}))).await;
    let holder = wait_decision(&client, &keys, "holder", WAIT).await;
    assert_eq!(holder.status, Status::Placed, "{holder:?}");

    for id in ["w1", "w2", "w3"] {
        put_request(&client, &keys, id, request_json(1.0, 128, json!({}))).await;
        let d = wait_decision(&client, &keys, id, WAIT).await;
        assert_eq!(d.status, Status::Unschedulable, "{d:?}");
        assert!(d.reason.starts_with("0/1 engines fit:"), "{:?}", d.reason);
    }

    // An engine too small for any of them: a new engine gives every parked request another
    // look, and each reason counts it.
    put_engine(&client, &keys, "small", 0.5, 4096.0, &[]).await;
    for id in ["w1", "w2", "w3"] {
        let d = wait_decision_where(
            &client,
            &keys,
            id,
            WAIT,
            "a reason counting two engines",
            |d| d.reason.starts_with("0/2 engines fit:"),
        )
        .await;
        assert_eq!(d.status, Status::Unschedulable, "{d:?}");
    }
    let parked_at = get(&client, &keys.decision(&rid("w3")))
        .await
        .unwrap()
        .mod_revision;
    // A placement on it: nothing they could use.
    put_request(&client, &keys, "tiny", request_json(0.25, 64, json!({}))).await;
    let tiny = wait_decision(&client, &keys, "tiny", WAIT).await;
    assert_eq!(placed_engine(&tiny), "small");
    // A request the leader decides after them, and waits for: by then it has had every chance
    // to look at the parked ones again, and it did not write them again.
    put_request(&client, &keys, "later", request_json(0.25, 64, json!({}))).await;
    wait_decision(&client, &keys, "later", WAIT).await;
    let w3 = get(&client, &keys.decision(&rid("w3"))).await.unwrap();
    assert_eq!(
        w3.mod_revision, parked_at,
        "a change that fits nothing retried w3"
    );

    // The holder goes: two cpus free on e1. The two oldest are placed; the third is looked at
    // again and waits (its reason changed only in its sizes: not written again).
    delete_key(&client, keys.request(&rid("holder"))).await;
    for id in ["w1", "w2"] {
        let d = wait_decision_where(&client, &keys, id, WAIT, "placed decision", placed).await;
        assert_eq!(placed_engine(&d), "e1");
    }
    let w3 = wait_decision(&client, &keys, "w3", WAIT).await;
    assert_eq!(w3.status, Status::Unschedulable, "{w3:?}");

    // Not starved: the next release is its turn.
    delete_key(&client, keys.request(&rid("w1"))).await;
    let w3 = wait_decision_where(&client, &keys, "w3", WAIT, "placed decision", placed).await;
    assert_eq!(placed_engine(&w3), "e1");

    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.placed, 4, "w2, w3, tiny and later");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_request_is_placed_when_an_engine_is_added() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 1.0, 1024.0, &[]).await;
    let replica = Replica::start(&etcd, "replica-grows");

    put_request(&client, &keys, "b", request_json(1.0, 128, json!({}))).await;
    let b = wait_decision(&client, &keys, "b", WAIT).await;
    assert_eq!(b.status, Status::Placed, "{b:?}");
    put_request(&client, &keys, "c", request_json(1.0, 128, json!({}))).await;
    let c = wait_decision(&client, &keys, "c", WAIT).await;
    assert_eq!(c.status, Status::Unschedulable, "{c:?}");
    assert!(c.reason.starts_with("0/1 engines fit:"), "{:?}", c.reason);

    put_engine(&client, &keys, "e2", 1.0, 1024.0, &[]).await;
    let c = wait_decision_where(&client, &keys, "c", WAIT, "placed decision", placed).await;
    assert_eq!(placed_engine(&c), "e2");
    assert_eq!(reservations_for(&client, &keys, "c").await.len(), 1);
    let b = wait_decision(&client, &keys, "b", WAIT).await;
    assert_eq!(placed_engine(&b), "e1", "b stays where it was");

    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.placed, 2);
    replica.stop().await;
}

/// With the health policy of `--docker`, only engines with a `health/<engine>` key are
/// schedulable, and `--count-live` counts live use against capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_engines_with_health_are_schedulable_and_live_use_counts() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 2.0, 1024.0, &[]).await;
    put_engine(&client, &keys, "e2", 2.0, 1024.0, &[]).await;
    let policy = citadel::cache::HealthPolicy {
        docker: true,
        count_live: true,
        launch_all: false,
    };
    let replica = Replica::start_with_policy(&etcd.endpoint(), "replica-health", policy);

    put_request(&client, &keys, "a", request_json(1.0, 128, json!({}))).await;
    let a = wait_decision(&client, &keys, "a", WAIT).await;
    assert_eq!(a.status, Status::Unschedulable, "{a:?}");
    assert!(a.reason.contains("2 unhealthy"), "{:?}", a.reason);

    // e2 answers, but is busy: 1.5 of its 2 cpus are in live use, so 1 cpu does not fit.
    let health = |engine: &str, cpus: f64| {
        json!({
            "engine": engine, "last_contact": "2026-11-28T00:00:00Z", "cpus_used": cpus,
            "memory_used_mb": 10.0, "containers_running": 1, "checked_by": "test"
        })
        .to_string()
    };
    let mut kv = client.kv_client();
    kv.put(keys.health(&eid("e2")), health("e2", 1.5), None)
        .await
        .expect("put health");
    let a = wait_decision_where(&client, &keys, "a", WAIT, "a new reason", |d| {
        d.reason.contains("insufficient cpus")
    })
    .await;
    assert!(a.reason.contains("1 unhealthy"), "{:?}", a.reason);

    // e1 answers, idle: the request lands there.
    kv.put(keys.health(&eid("e1")), health("e1", 0.0), None)
        .await
        .expect("put health");
    let a = wait_decision_where(&client, &keys, "a", WAIT, "placed decision", placed).await;
    assert_eq!(placed_engine(&a), "e1");
    assert_invariants(&client, &keys).await;
    replica.stop().await;
}

/// What `citadel ls` shows: the cluster summary computed from one load of the registry.
async fn ls_usage(client: &etcd_client::Client) -> citadel::model::ClusterInfo {
    let cache = Cache::new(keys(), 1.0);
    cache.load(client).await.expect("load the registry");
    cache.read().cluster_info()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_removes_decision_and_frees_reservation() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 2.0, 2048.0, &[]).await;
    let replica = Replica::start(&etcd, "replica-release");

    put_request(&client, &keys, "job-1", request_json(0.5, 256, json!({}))).await;
    let d = wait_decision(&client, &keys, "job-1", WAIT).await;
    assert_eq!(d.status, Status::Placed, "{d:?}");
    let used = ls_usage(&client).await;
    assert_eq!(
        (
            used.reserved_cpus,
            used.reserved_memory,
            used.container_count
        ),
        (0.5, 256.0, 1),
        "{used:?}"
    );

    delete_key(&client, keys.request(&rid("job-1"))).await;
    wait_until(
        "job-1's decision and reservation are gone",
        WAIT,
        || async {
            get(&client, &keys.decision(&rid("job-1"))).await.is_none()
                && reservations(&client, &keys).await.is_empty()
        },
    )
    .await;
    let used = ls_usage(&client).await;
    assert_eq!(
        (
            used.reserved_cpus,
            used.reserved_memory,
            used.container_count
        ),
        (0.0, 0.0, 0),
        "{used:?}"
    );
    assert_eq!(used.engine_count, 1);

    let report = assert_invariants(&client, &keys).await;
    assert_eq!((report.requests, report.decided, report.placed), (0, 0, 0));
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_invalid_decisions_and_the_replica_keeps_serving() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 4.0, 4096.0, &[]).await;
    let replica = Replica::start(&etcd, "replica-malformed");

    let long_id = "x".repeat(300);
    // 1 MB of bytes that are neither JSON nor UTF-8.
    let junk: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let good = |extra: serde_json::Value| request_json(0.5, 64, extra).into_bytes();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not-json", b"{not json".to_vec(), "malformed JSON"),
        ("array", b"[]".to_vec(), "request must be a JSON object"),
        (
            "cpus-negative",
            br#"{"image":"x","cpus":-1,"memory":1,"type":"service"}"#.to_vec(),
            "cpus",
        ),
        (
            "cpus-nan",
            br#"{"image":"x","cpus":"NaN","memory":1,"type":"service"}"#.to_vec(),
            "cpus",
        ),
        (
            "cpus-huge",
            br#"{"image":"x","cpus":1e300,"memory":1,"type":"service"}"#.to_vec(),
            "cpus",
        ),
        (
            "memory-zero",
            br#"{"image":"x","cpus":1,"memory":0,"type":"service"}"#.to_vec(),
            "memory",
        ),
        (
            "image-empty",
            br#"{"image":"","cpus":1,"memory":1,"type":"service"}"#.to_vec(),
            "image",
        ),
        ("type-unknown", good(json!({ "type": "daemon" })), "type"),
        (long_id.as_str(), good(json!({})), "id"),
        ("has space", good(json!({})), "id"),
        // Over the 256 KiB request limit: refused before it is even parsed.
        ("junk-1mb", junk, "request"),
    ];
    for (id, value, _) in &cases {
        put_request(&client, &keys, id, value.clone()).await;
    }

    for (id, _, field) in &cases {
        let d = wait_decision(&client, &keys, id, WAIT).await;
        let shown: String = id.chars().take(20).collect();
        assert_eq!(d.status, Status::Invalid, "{shown}: {d:?}");
        assert!(
            d.reason.starts_with(field),
            "{shown}: reason {:?} should start with {field:?}",
            d.reason
        );
        assert!(d.resource.is_none(), "{shown}: {d:?}");
        assert!(
            reservations_for(&client, &keys, id).await.is_empty(),
            "{shown}: invalid input reserved something"
        );
    }
    assert!(reservations(&client, &keys).await.is_empty());
    assert!(replica.is_running(), "bad input stopped the replica");

    put_request(&client, &keys, "good-1", good(json!({}))).await;
    let d = wait_decision(&client, &keys, "good-1", WAIT).await;
    assert_eq!(d.status, Status::Placed, "{d:?}");
    assert_eq!(reservations(&client, &keys).await.len(), 1);

    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.invalid, cases.len());
    assert_eq!(report.placed, 1);
    replica.stop().await;
}

/// Compacts etcd's history up to its current revision, physically.
async fn compact_now(client: &etcd_client::Client) -> i64 {
    let rev = put_raw(client, "/compaction-marker", "x").await;
    client
        .kv_client()
        .compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    rev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_compaction() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 1000.0, 1_000_000.0, &[]).await;
    let replica = Replica::start(&etcd, "replica-compaction");

    let mut want = BTreeMap::new();
    for i in 0..50 {
        let id = format!("first-{i}");
        let rev = put_request(&client, &keys, &id, request_json(0.01, 1, json!({}))).await;
        want.insert(id, rev);
    }
    compact_now(&client).await;
    for round in 0..5 {
        for i in 0..20 {
            let id = format!("round-{round}-{i}");
            let rev = put_request(&client, &keys, &id, request_json(0.01, 1, json!({}))).await;
            want.insert(id, rev);
            if i == 10 {
                compact_now(&client).await;
            }
        }
        compact_now(&client).await;
    }

    let decided = wait_all_decided(&client, &keys, &want, WAIT).await;
    assert_eq!(decided.len(), want.len(), "one decision key per request");
    for (id, d) in &decided {
        assert_eq!(d.decision.status, Status::Placed, "{id}: {:?}", d.decision);
        assert_eq!(d.version, 1, "{id}: decision written {} times", d.version);
    }
    let held = reservations(&client, &keys).await;
    assert_eq!(held.len(), want.len(), "one reservation per placed request");

    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.placed, want.len());
    replica.stop().await;
}

/// Starts a cache on `client` and waits until it has loaded revision `rev`.
async fn start_cache(
    client: &etcd_client::Client,
    rev: i64,
) -> (
    std::sync::Arc<Cache>,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let cache = Cache::new(keys(), 1.0);
    let (shutdown, task) = run_cache(&cache, client, rev).await;
    (cache, shutdown, task)
}

/// Keeps `cache` in step with etcd through `client`, once it has loaded revision `rev`.
async fn run_cache(
    cache: &std::sync::Arc<Cache>,
    client: &etcd_client::Client,
    rev: i64,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(cache.clone().run(client.clone(), shutdown_rx));
    assert!(cache.wait_for(rev, WAIT).await, "cache never loaded");
    (shutdown, task)
}

async fn stop_cache(shutdown: watch::Sender<bool>, task: tokio::task::JoinHandle<()>) {
    shutdown.send(true).unwrap();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("cache task stops on shutdown")
        .expect("cache task did not panic");
}

/// Waits until the cache has applied `rev` (it asks etcd for progress notifications, so keys
/// outside the prefix still count) and then holds exactly the `present` requests.
async fn assert_cache_holds(cache: &Cache, rev: i64, present: &[&str], absent: &[&str]) {
    assert!(
        cache.wait_for(rev, WAIT).await,
        "cache stuck at revision {} < {rev}",
        cache.revision()
    );
    let state = cache.read();
    for id in present {
        assert!(state.request(&rid(id)).is_some(), "cache lost {id}");
    }
    for id in absent {
        assert!(state.request(&rid(id)).is_none(), "cache still has {id}");
    }
}

/// Waits (bounded) until the cache holds the `present` requests and none of the `absent` ones.
/// Unlike [`assert_cache_holds`] this does not rely on `Cache::wait_for` (see the ignored
/// `cache_wait_for_returns_only_once_earlier_events_are_applied`).
async fn wait_cache_holds(cache: &Cache, present: &[&str], absent: &[&str]) {
    wait_until(
        &format!("the cache holds {present:?} and not {absent:?}"),
        WAIT,
        || async {
            let state = cache.read();
            present.iter().all(|id| state.request(&rid(id)).is_some())
                && absent.iter().all(|id| state.request(&rid(id)).is_none())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_recovers_from_an_etcd_restart() {
    let mut etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 4.0, 4096.0, &[]).await;
    put_request(&client, &keys, "old-1", request_json(0.1, 1, json!({}))).await;
    let rev = put_request(&client, &keys, "old-2", request_json(0.1, 1, json!({}))).await;
    let (cache, shutdown, task) = start_cache(&client, rev).await;
    assert_cache_holds(&cache, rev, &["old-1", "old-2"], &[]).await;

    // The watch stream breaks; while etcd is down nothing is written.
    etcd.kill().await;
    etcd.restart().await.expect("restart etcd");

    // Back up: change things, then compact them away.
    delete_key(&client, keys.request(&rid("old-1"))).await;
    for i in 0..5 {
        let id = format!("new-{i}");
        put_request(&client, &keys, &id, request_json(0.1, 1, json!({}))).await;
    }
    compact_now(&client).await;
    let new: Vec<String> = (0..5).map(|i| format!("new-{i}")).collect();
    let mut present: Vec<&str> = new.iter().map(String::as_str).collect();
    present.push("old-2");
    wait_cache_holds(&cache, &present, &["old-1"]).await;

    // And it keeps following.
    put_request(&client, &keys, "after-1", request_json(0.1, 1, json!({}))).await;
    wait_cache_holds(&cache, &["after-1"], &[]).await;

    stop_cache(shutdown, task).await;
    // No controller ran: nothing decided, nothing reserved, nothing violated.
    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.decided, 0);
}

/// The leading replica's mirror takes its own decisions from its commits; one written by
/// anyone else is held back by its ledger and judged someone else's (to be repaired), and is
/// applied as any event once the replica stops leading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leading_cache_holds_back_others_decisions_and_applies_them_when_it_stops_leading() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 4.0, 4096.0, &[]).await;
    put_request(&client, &keys, "mine", request_json(1.0, 64, json!({}))).await;
    let rev = put_request(&client, &keys, "theirs", request_json(2.0, 64, json!({}))).await;
    let (cache, books) = Cache::with_listener(keys.clone(), 1.0, Ledger::default());
    let (shutdown, task) = run_cache(&cache, &client, rev).await;
    assert_cache_holds(&cache, rev, &["mine", "theirs"], &[]).await;
    let reserved = |cache: &Cache| {
        cache
            .read()
            .usage(&eid("e1"), Default::default())
            .cpus
            .as_cpus()
    };

    Ledger::set_leading(&mut books.lock(), true);
    // Our own write, applied as the leader applies it after a commit; its event comes later.
    let seq = books.lock().listener_mut().begin_write();
    let body = placed_on_e1(1.0, rev);
    let at = put_raw(&client, keys.decision(&rid("mine")), body.as_str()).await;
    let decision: citadel::model::Decision = serde_json::from_str(&body).unwrap();
    {
        let mut books = books.lock();
        books.committed(&rid("mine"), at, Some(&decision));
        books.listener_mut().end_write(seq);
    }
    // Someone else's: held back. Events after it still arrive.
    put_raw(
        &client,
        keys.decision(&rid("theirs")),
        placed_on_e1(2.0, rev),
    )
    .await;
    put_request(&client, &keys, "later", request_json(0.1, 1, json!({}))).await;
    wait_cache_holds(&cache, &["later"], &[]).await;
    {
        let mut books = books.lock();
        assert!(books.mirror().decision(&rid("mine")).is_some());
        assert!(books.mirror().decision(&rid("theirs")).is_none());
        Ledger::judge(&mut books);
        assert_eq!(books.listener().repairs(), 1, "theirs is someone else's");
    }
    assert_eq!(reserved(&cache), 1.0);

    Ledger::set_leading(&mut books.lock(), false);
    assert!(cache.read().decision(&rid("theirs")).is_some());
    assert_eq!(
        cache.read().decision(&rid("mine")).map(|d| d.mod_revision),
        Some(at)
    );
    assert_eq!(reserved(&cache), 3.0);
    stop_cache(shutdown, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_relists_when_its_watch_resumes_on_a_compacted_revision() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    // The cache reaches etcd through a proxy the test can cut; the test's own client does not.
    let proxy = Proxy::start(&etcd).await;
    let cut_client = proxy.connect().await;
    put_engine(&client, &keys, "e1", 4.0, 4096.0, &[]).await;
    put_request(&client, &keys, "old-1", request_json(0.1, 1, json!({}))).await;
    let rev = put_request(&client, &keys, "old-2", request_json(0.1, 1, json!({}))).await;
    let (cache, shutdown, task) = start_cache(&cut_client, rev).await;
    assert_cache_holds(&cache, rev, &["old-1", "old-2"], &[]).await;

    // Cut off, the cache cannot resume its watch while history it has not seen is compacted:
    // when it comes back, its next revision is gone and only a fresh list can catch it up.
    proxy.cut();
    delete_key(&client, keys.request(&rid("old-1"))).await;
    put_request(&client, &keys, "new-1", request_json(0.1, 1, json!({}))).await;
    put_request(&client, &keys, "old-2", request_json(0.2, 1, json!({}))).await;
    let last = compact_now(&client).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.heal();

    wait_until(
        "the cache holds what changed while it was cut off",
        WAIT,
        || async {
            let state = cache.read();
            state.request(&rid("old-1")).is_none()
                && state.request(&rid("new-1")).is_some()
                && state
                    .request(&rid("old-2"))
                    .is_some_and(|r| r.container()["cpus"] == json!(0.2))
        },
    )
    .await;
    assert!(cache.wait_for(last, WAIT).await);
    put_request(&client, &keys, "after-1", request_json(0.1, 1, json!({}))).await;
    wait_cache_holds(&cache, &["after-1"], &[]).await;

    stop_cache(shutdown, task).await;
    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.decided, 0);
}

/// `Cache::wait_for(rev)` promises every event up to `rev` is applied; the new leader relies on
/// it (`Manager::lead` waits for `elected_at`) before planning on the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_wait_for_returns_only_once_earlier_events_are_applied() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    let proxy = Proxy::start(&etcd).await;
    let cut_client = proxy.connect().await;
    put_engine(&client, &keys, "e1", 4.0, 4096.0, &[]).await;
    let rev = put_request(&client, &keys, "old-1", request_json(0.1, 1, json!({}))).await;
    let (cache, shutdown, task) = start_cache(&cut_client, rev).await;

    // While the cache is cut off the registry moves on (no compaction here): when it comes back
    // its watch resumes from where it stopped and etcd replays what it missed. The window is
    // short (etcd syncs a lagging watcher every 100 ms), so look three times.
    for round in 0..3 {
        proxy.cut();
        let mut last = 0;
        let mut ids = Vec::new();
        for i in 0..20 {
            let id = format!("new-{round}-{i}");
            last = put_request(&client, &keys, &id, request_json(0.1, 1, json!({}))).await;
            ids.push(id);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.heal();
        let present: Vec<&str> = ids.iter().map(String::as_str).collect();
        assert_cache_holds(&cache, last, &present, &[]).await;
    }

    stop_cache(shutdown, task).await;
    assert_invariants(&client, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_cut_off_from_etcd_catches_up_after_compaction() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    let proxy = Proxy::start(&etcd).await;
    put_engine(&client, &keys, "e1", 100.0, 100_000.0, &[]).await;
    let replica = Replica::start_at(&proxy.endpoint(), "replica-cut");

    for i in 0..5 {
        put_request(
            &client,
            &keys,
            &format!("before-{i}"),
            request_json(0.5, 16, json!({})),
        )
        .await;
    }
    for i in 0..5 {
        let d = wait_decision(&client, &keys, &format!("before-{i}"), WAIT).await;
        assert_eq!(d.status, Status::Placed, "{d:?}");
    }

    // Cut off long enough for its 2 s lease to expire; meanwhile the registry moves on and its
    // history is compacted away.
    proxy.cut();
    let mut want = BTreeMap::new();
    for i in 0..2 {
        delete_key(&client, keys.request(&rid(&format!("before-{i}")))).await;
    }
    for i in 0..20 {
        let id = format!("during-{i}");
        let rev = put_request(&client, &keys, &id, request_json(0.5, 16, json!({}))).await;
        want.insert(id, rev);
    }
    compact_now(&client).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        leader_id(&client, &keys).await.is_none(),
        "the cut-off leader's lease should have expired"
    );
    proxy.heal();

    let decided = wait_all_decided(&client, &keys, &want, WAIT).await;
    for id in want.keys() {
        assert_eq!(decided[id].decision.status, Status::Placed, "{id}");
        assert_eq!(decided[id].version, 1, "{id} decided twice");
    }
    wait_until("the deleted requests are released", WAIT, || async {
        let held = reservations(&client, &keys).await;
        held.len() == 23
            && !held
                .iter()
                .any(|(_, r, _)| r == "before-0" || r == "before-1")
    })
    .await;
    for i in 0..2 {
        assert!(
            get(&client, &keys.decision(&rid(&format!("before-{i}"))))
                .await
                .is_none()
        );
    }
    assert!(replica.is_running());

    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.placed, 23);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_written_while_leader_restarts_is_decided() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 100.0, 100_000.0, &[]).await;
    put_engine(&client, &keys, "e2", 100.0, 100_000.0, &[]).await;
    let mut replicas = vec![
        Replica::start(&etcd, "replica-a"),
        Replica::start(&etcd, "replica-b"),
    ];

    put_request(&client, &keys, "probe", request_json(0.1, 16, json!({}))).await;
    let probe = wait_decision(&client, &keys, "probe", WAIT).await;
    let leader_at = replicas
        .iter()
        .position(|r| r.id == probe.decided_by)
        .unwrap_or_else(|| panic!("decided by an unknown replica: {probe:?}"));
    let leader = replicas.remove(leader_at);
    let survivor = replicas.pop().unwrap();

    let mut want = BTreeMap::new();
    let mut put = async |i: usize| {
        let id = format!("req-{i}");
        let rev = put_request(&client, &keys, &id, request_json(0.1, 16, json!({}))).await;
        want.insert(id, rev);
    };
    for i in 0..10 {
        put(i).await;
    }
    // The leader resigns while requests keep arriving.
    leader.signal_stop();
    for i in 10..20 {
        put(i).await;
    }
    leader.stop().await;
    for i in 20..30 {
        put(i).await;
    }

    let decided = wait_all_decided(&client, &keys, &want, WAIT).await;
    for (id, d) in decided.iter().filter(|(id, _)| want.contains_key(*id)) {
        assert_eq!(d.decision.status, Status::Placed, "{id}: {:?}", d.decision);
        assert_eq!(d.version, 1, "{id}: decided {} times", d.version);
    }
    for i in 20..30 {
        let d = &decided[&format!("req-{i}")].decision;
        assert_eq!(
            d.decided_by, survivor.id,
            "req-{i} was written after the old leader stopped"
        );
    }
    let held = reservations(&client, &keys).await;
    assert_eq!(held.len(), want.len() + 1, "one reservation per request");
    let per_request: BTreeSet<&String> = held.iter().map(|(_, r, _)| r).collect();
    assert_eq!(per_request.len(), held.len(), "a request reserved twice");

    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.placed, want.len() + 1);
    survivor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_loses_nothing() {
    let mut etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 100.0, 100_000.0, &[]).await;
    let replica = Replica::start(&etcd, "replica-etcd-restart");
    put_request(&client, &keys, "warmup", request_json(0.1, 16, json!({}))).await;
    wait_decision(&client, &keys, "warmup", WAIT).await;

    // Written just before etcd dies: accepted by etcd, maybe not yet decided.
    let mut want = BTreeMap::new();
    for i in 0..10 {
        let id = format!("before-{i}");
        let rev = put_request(&client, &keys, &id, request_json(0.1, 16, json!({}))).await;
        want.insert(id, rev);
    }
    etcd.kill().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    etcd.restart().await.expect("restart etcd");
    for i in 0..10 {
        let id = format!("after-{i}");
        let rev = put_request(&client, &keys, &id, request_json(0.1, 16, json!({}))).await;
        want.insert(id, rev);
    }

    let decided = wait_all_decided(&client, &keys, &want, Duration::from_secs(30)).await;
    for id in want.keys() {
        let d = &decided[id];
        assert_eq!(d.decision.status, Status::Placed, "{id}: {:?}", d.decision);
        assert_eq!(d.version, 1, "{id}: decided {} times", d.version);
    }
    assert!(replica.is_running());
    assert_eq!(reservations(&client, &keys).await.len(), want.len() + 1);

    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.placed, want.len() + 1);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_a_placed_request_re_decides_it() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 4.0, 4096.0, &[]).await;
    let replica = Replica::start(&etcd, "replica-change");

    let first = put_request(&client, &keys, "r", request_json(1.0, 128, json!({}))).await;
    let d = wait_decision(&client, &keys, "r", WAIT).await;
    assert_eq!(
        (d.status, d.request_revision),
        (Status::Placed, first),
        "{d:?}"
    );

    let second = put_request(&client, &keys, "r", request_json(2.0, 128, json!({}))).await;
    let d = wait_decision_where(
        &client,
        &keys,
        "r",
        WAIT,
        "decision on the new revision",
        |d| d.request_revision == second,
    )
    .await;
    assert_eq!(d.status, Status::Placed, "{d:?}");
    assert_eq!(d.container.value()["cpus"], json!(2.0));

    let held = reservations_for(&client, &keys, "r").await;
    assert_eq!(held.len(), 1, "exactly one reservation: {held:?}");
    let (engine, r) = &held[0];
    assert_eq!(engine, &placed_engine(&d));
    assert_eq!(r.cpus, 2.0, "{r:?}");

    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.placed, 1);
    replica.stop().await;
}

/// The leader does not compare a request's revision when it places it: a placement that lands
/// after its request was changed or deleted is stale, and every cache sees it so (the decision
/// names the revision it decided). Here two such placements, as a leader would have committed
/// them, wait for a replica: the deleted request's decision goes, the changed one is decided
/// again on its new revision, and the capacity both held is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placement_that_lands_after_its_request_changed_or_went_is_repaired() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 4.0, 4096.0, &[]).await;
    // "gone" was deleted before its placement committed.
    let gone = put_request(&client, &keys, "gone", request_json(1.5, 64, json!({}))).await;
    delete_key(&client, keys.request(&rid("gone"))).await;
    put_raw(
        &client,
        keys.decision(&rid("gone")),
        placed_on_e1(1.5, gone),
    )
    .await;
    // "changed" went from 1.5 to 2 cpus before its placement committed.
    let old = put_request(&client, &keys, "changed", request_json(1.5, 64, json!({}))).await;
    let new = put_request(&client, &keys, "changed", request_json(2.0, 64, json!({}))).await;
    put_raw(
        &client,
        keys.decision(&rid("changed")),
        placed_on_e1(1.5, old),
    )
    .await;
    assert_eq!(
        assert_invariants(&client, &keys).await.placed,
        2,
        "both stale placements count against e1 until they are repaired"
    );

    let replica = Replica::start(&etcd, "replica-stale");
    let d = wait_decision_where(
        &client,
        &keys,
        "changed",
        WAIT,
        "decision on the new revision",
        |d| d.request_revision == new,
    )
    .await;
    assert_eq!(d.status, Status::Placed, "{d:?}");
    wait_until("the deleted request's decision is gone", WAIT, || async {
        get(&client, &keys.decision(&rid("gone"))).await.is_none()
    })
    .await;
    let held = reservations(&client, &keys).await;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!((held[0].1.as_str(), held[0].2.cpus), ("changed", 2.0));
    let report = assert_invariants(&client, &keys).await;
    assert_eq!((report.requests, report.placed), (1, 1));
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_watch_is_not_cut_by_etcd() {
    let etcd = start_etcd().await;
    // Connected exactly as every replica and CLI command connects (`store::connect`).
    let client = connect(&etcd).await;
    let keys = keys();
    let mut stream = client
        .watch_client()
        .watch(
            keys.root(),
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await
        .expect("watch");
    let created = tokio::time::timeout(WAIT, stream.message()).await;
    assert!(
        matches!(&created, Ok(Ok(Some(r))) if r.created()),
        "{created:?}"
    );

    // Nothing is written for a while: an idle registry, e.g. `citadel submit --wait` waiting on
    // a busy cluster. etcd's default --grpc-keepalive-min-time is 5 s.
    let idle = tokio::time::timeout(Duration::from_secs(12), stream.message()).await;
    assert!(idle.is_err(), "the idle watch ended: {idle:?}");

    put_raw(&client, keys.engine(&eid("e1")), r#"{"cpus":1,"memory":1}"#).await;
    let event = tokio::time::timeout(WAIT, stream.message()).await;
    assert!(
        matches!(&event, Ok(Ok(Some(r))) if r.events().len() == 1),
        "the watch no longer delivers: {event:?}"
    );
    assert_invariants(&client, &keys).await;
}

/// Requests that are each within citadel's 256 KiB request limit, waiting together (a backlog
/// when the controller starts): their decisions echo them, so one transaction cannot hold them
/// all and the leader must split by bytes. One over the limit gets an `invalid` decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_large_requests_does_not_stall_the_pipeline() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 4.0, 4096.0, &[]).await;

    let pad = "p".repeat(200_000);
    let big = request_json(0.1, 16, json!({ "environment": { "PAD": pad } }));
    let mut want = BTreeMap::new();
    let too_big = request_json(
        0.1,
        16,
        json!({ "environment": { "PAD": "p".repeat(600_000) } }),
    );
    let rev = put_request(&client, &keys, "too-big", too_big).await;
    want.insert("too-big".to_string(), rev);
    for id in [
        "big-1", "big-2", "big-3", "big-4", "big-5", "big-6", "big-7", "big-8",
    ] {
        want.insert(
            id.to_string(),
            put_request(&client, &keys, id, big.clone()).await,
        );
    }
    let rev = put_request(&client, &keys, "small-1", request_json(0.1, 16, json!({}))).await;
    want.insert("small-1".to_string(), rev);

    let replica = Replica::start(&etcd, "replica-large");
    let decided = wait_all_decided(&client, &keys, &want, WAIT).await;
    for id in want.keys().filter(|id| *id != "too-big") {
        assert_eq!(decided[id].decision.status, Status::Placed, "{id}");
    }
    let refused = &decided["too-big"].decision;
    assert_eq!(refused.status, Status::Invalid);
    assert!(refused.reason.starts_with("request: "), "{refused:?}");
    assert!(replica.is_running());
    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.placed, 9);
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_lists_more_than_four_mib_in_one_page() {
    // tonic refuses a response over 4 MiB by default: one list page of 30 requests of 200 KB
    // would have left every replica's cache unable to ever load.
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    let big = request_json(
        0.1,
        16,
        json!({ "environment": { "PAD": "p".repeat(200_000) } }),
    );
    let ids: Vec<String> = (0..30).map(|i| format!("listed-{i:02}")).collect();
    // Six per transaction: etcd takes at most 1.5 MiB per request.
    let written = put_requests(&client, &keys, &ids, &big, 6).await;
    let rev = written.values().copied().max().unwrap();
    let (cache, shutdown, task) = start_cache(&client, rev).await;
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_cache_holds(&cache, rev, &ids, &[]).await;
    stop_cache(shutdown, task).await;
}

/// Writes one request body under every id, `per_txn` a transaction; returns each id's revision.
async fn put_requests(
    client: &etcd_client::Client,
    keys: &citadel::keys::Keys,
    ids: &[String],
    body: &str,
    per_txn: usize,
) -> BTreeMap<String, i64> {
    let mut written = BTreeMap::new();
    for chunk in ids.chunks(per_txn) {
        let requests: Vec<(String, String)> = chunk
            .iter()
            .map(|id| (id.clone(), body.to_string()))
            .collect();
        let rev = put_requests_together(client, keys, &requests).await;
        written.extend(chunk.iter().map(|id| (id.clone(), rev)));
    }
    written
}

/// 600 requests, written before the replica starts, so that the leader's first round plans
/// them all. Returns how many transactions their decisions were committed in.
async fn place_a_burst(etcd: &citadel_testkit::etcd::EtcdProcess, max_txn_ops: usize) -> usize {
    let client = connect(etcd).await;
    let keys = keys();
    for e in ["e1", "e2", "e3"] {
        put_engine(&client, &keys, e, 64.0, 65_536.0, &[]).await;
    }
    let ids: Vec<String> = (0..600).map(|i| format!("burst-{i:03}")).collect();
    // 100 a transaction: etcd's own limit may be the default 128.
    let want = put_requests(&client, &keys, &ids, &request_json(0.1, 16, json!({})), 100).await;

    let replica = Replica::start_with_max_txn_ops(&etcd.endpoint(), "replica-ops", max_txn_ops);
    let decided = wait_all_decided(&client, &keys, &want, WAIT).await;
    assert!(decided.values().all(|d| placed(&d.decision)));
    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.placed, 600);
    replica.stop().await;

    let (kvs, _) = citadel::store::range_all(&client, &keys.decisions(), 1_000)
        .await
        .unwrap();
    kvs.iter()
        .map(|kv| kv.mod_revision())
        .collect::<BTreeSet<_>>()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_max_txn_ops_packs_fuller_transactions() {
    let etcd = citadel_testkit::etcd::EtcdProcess::start_with(citadel_testkit::etcd::EtcdOptions {
        max_txn_ops: Some(1024),
        ..Default::default()
    })
    .await
    .expect("start etcd");
    // At 128, 600 placements need at least 5 transactions (127 each at most).
    let txns = place_a_burst(&etcd, 1024).await;
    assert!(txns < 5, "600 placements took {txns} transactions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_txn_ops_above_etcds_falls_back_to_the_default() {
    let etcd = start_etcd().await;
    // etcd refuses the first, too large, transaction; the leader goes back to 128 and places
    // everything.
    let txns = place_a_burst(&etcd, 1024).await;
    assert!(
        txns >= 5,
        "600 placements in {txns} transactions of at most 128 operations"
    );
}
