//! What one bad request, key or slip with etcdctl can do to everyone else: bounded, repaired or
//! reported. Every test runs a real etcd and real replicas (in process); the CLI ones run the
//! real binary.

use std::collections::BTreeMap;
use std::time::Duration;

use citadel::cache::Cache;
use citadel::model::{Decision, Status};
use etcd_client::{DeleteOptions, GetOptions};
use serde_json::json;
use tokio::sync::watch;

mod common;
use common::*;

fn status_is(status: Status) -> impl Fn(&Decision) -> bool {
    move |d| d.status == status
}

/// A request whose constraints would each compile to megabytes, a request past every limit,
/// and a typo each get an `invalid` decision naming the limit, while a good request beside them
/// is placed; the echo of a deep request stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_invalid_at_once_and_others_are_placed() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 8.0, 8192.0, &["zone=a"]).await;
    let replica = Replica::start(&etcd, "r1");

    let heavy: Vec<String> = (0..150)
        .map(|i| format!("zone!=/^(\\w|\\d){{{}}}x{i}$/", 60 + i % 7))
        .collect();
    let nested = format!(
        r#"{{"image":"x","cpus":0.1,"memory":1,"type":"service","user_data":{{"deep":{}0{}}}}}"#,
        "[".repeat(40),
        "]".repeat(40)
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "many-regexes",
            request_json(0.1, 1, json!({ "labels": heavy })),
            "labels: 150 constraints, the limit is 32",
        ),
        (
            "nine-regexes",
            request_json(
                0.1,
                1,
                json!({ "labels": (0..9).map(|i| format!("zone!=/^x{i}$/")).collect::<Vec<_>>() }),
            ),
            "labels: 9 /regex/ constraints, the limit is 8",
        ),
        (
            "huge-regex",
            request_json(0.1, 1, json!({ "labels": ["zone!=/^(\\w|\\d){60}x1$/"] })),
            "compiles to more than 64 KiB",
        ),
        (
            "typo",
            request_json(0.1, 1, json!({ "lables": ["zone==b"] })),
            "unknown field \"lables\" (did you mean \"labels\"?)",
        ),
        (
            "cpu-typo",
            r#"{"image":"x","cpu":1,"memory":1,"type":"service"}"#.to_string(),
            "unknown field \"cpu\" (did you mean \"cpus\"?)",
        ),
        (
            "nested",
            nested,
            "request: nested 42 levels deep, the limit is 32",
        ),
        (
            "bad-restart",
            request_json(0.1, 1, json!({ "restart_policy": {"name": "sometimes"} })),
            "restart_policy: the name is not",
        ),
    ];
    for (id, body, _) in &cases {
        put_request(&client, &keys, id, body.as_str()).await;
    }
    put_request(&client, &keys, "good", request_json(0.5, 64, json!({}))).await;

    let good = wait_decision(&client, &keys, "good", WAIT).await;
    assert_eq!(good.status, Status::Placed, "{good:?}");
    for (id, _, want) in &cases {
        let d = wait_decision(&client, &keys, id, WAIT).await;
        assert_eq!(d.status, Status::Invalid, "{id}: {d:?}");
        assert!(
            d.reason.contains(want),
            "{id}: {:?} should say {want:?}",
            d.reason
        );
        // Whatever was asked, the decision reads back with a depth-limited JSON reader.
        let raw = get(&client, &keys.decision(&rid(id)))
            .await
            .expect("decision");
        let back: serde_json::Value = serde_json::from_slice(&raw.value).expect("readable");
        assert!(depth(&back) <= citadel::model::MAX_DEPTH + 2, "{id}");
    }
    replica.stop().await;
    assert_invariants(&client, &keys).await;
}

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// A request rewritten while it stays unschedulable gets a decision for its new revision, and
/// the leader then rests instead of planning it again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_revision_gets_a_decision_and_an_idle_leader_rests() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 1.0, 1024.0, &[]).await;
    let replica = Replica::start(&etcd, "r1");
    let first = put_request(&client, &keys, "big", request_json(2.0, 64, json!({}))).await;
    let d = wait_decision_where(&client, &keys, "big", WAIT, "unschedulable", |d| {
        d.request_revision == first
    })
    .await;
    assert_eq!(d.status, Status::Unschedulable);
    let body = request_json(2.0, 64, json!({ "image": "other" }));
    let second = put_request(&client, &keys, "big", body).await;
    let d = wait_decision_where(&client, &keys, "big", WAIT, "the new revision's", |d| {
        d.request_revision == second
    })
    .await;
    assert_eq!(d.status, Status::Unschedulable, "{d:?}");
    assert!(
        d.reason
            .starts_with("0/1 engines fit: 1 insufficient cpus (needs 2 cpus, largest free "),
        "{d:?}"
    );

    // Idle now: nothing more to plan, whatever the leader's loop wakes up for (it used to plan
    // the rewritten request again and again, a full core's worth).
    let before = replica.metrics.planned_total();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        replica.metrics.planned_total(),
        before,
        "an idle leader plans nothing"
    );
    replica.stop().await;
}

/// Every decision under the prefix, by request id.
async fn decisions(client: &etcd_client::Client) -> BTreeMap<String, Decision> {
    let prefix = keys().decisions();
    get_prefix(client, &prefix)
        .await
        .into_iter()
        .filter_map(|(k, v)| {
            let id = k.strip_prefix(&prefix)?.to_string();
            Some((id, serde_json::from_slice(&v).ok()?))
        })
        .collect()
}

/// `etcdctl del --prefix …/decisions/`, a decision edited by hand and one forged for a request
/// that does not exist: the leader writes its own decisions back, on the same engines, and
/// deletes the forgery, without a change of leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_writes_back_decisions_someone_else_deletes_or_changes() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    for e in ["e1", "e2", "e3"] {
        put_engine(&client, &keys, e, 4.0, 4096.0, &[]).await;
    }
    let replica = Replica::start(&etcd, "r1");
    let mut want = BTreeMap::new();
    for i in 0..30 {
        let id = format!("r{i:02}");
        let rev = put_request(&client, &keys, &id, request_json(0.25, 16, json!({}))).await;
        want.insert(id, rev);
    }
    wait_all_decided(&client, &keys, &want, WAIT).await;
    let placed = decisions(&client).await;
    // An empty engine now: a request decided anew would be spread onto it; a decision written
    // back stays where it was.
    put_engine(&client, &keys, "e4", 4.0, 4096.0, &[]).await;

    client
        .kv_client()
        .delete(keys.decisions(), Some(DeleteOptions::new().with_prefix()))
        .await
        .expect("delete every decision");
    wait_all_decided(&client, &keys, &want, WAIT).await;
    let back = decisions(&client).await;
    for (id, d) in &placed {
        assert_eq!(back[id].status, Status::Placed, "{id}");
        assert_eq!(engine_of(&back[id]), engine_of(d), "{id} moved");
        assert_eq!(back[id].reservation, d.reservation, "{id}");
    }

    // Edited by hand to say something else: written back as the leader had it.
    let mut edited = back["r00"].clone();
    edited.status = Status::Unschedulable;
    edited.reservation = None;
    edited.reason = "edited".into();
    put_raw(
        &client,
        keys.decision(&rid("r00")),
        serde_json::to_vec(&edited).unwrap(),
    )
    .await;
    // Forged for a request that does not exist.
    put_raw(&client, keys.decision(&rid("ghost")), placed_on_e1(1.0, 1)).await;
    wait_decision_where(&client, &keys, "r00", WAIT, "written back", |d| {
        d.status == Status::Placed && d.reason != "edited"
    })
    .await;
    wait_until("the forged decision is deleted", WAIT, || async {
        get(&client, &keys.decision(&rid("ghost"))).await.is_none()
    })
    .await;
    assert_eq!(
        engine_of(&decisions(&client).await["r00"]),
        engine_of(&placed["r00"])
    );
    assert_eq!(leader_id(&client, &keys).await.as_deref(), Some("r1"));
    replica.stop().await;
    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.unsettled(), 0, "{report:#?}");
}

/// An election key put by hand without a lease would make every campaign wait forever: every
/// replica deletes it, and the next leader is elected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_key_without_a_lease_is_deleted_and_the_next_leader_elected() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 4.0, 4096.0, &[]).await;
    let a = Replica::start(&etcd, "a");
    put_request(&client, &keys, "one", request_json(0.1, 1, json!({}))).await;
    wait_decision(&client, &keys, "one", WAIT).await;
    let impostor = format!("{}/impostor", keys.leader());
    put_raw(
        &client,
        impostor.as_str(),
        r#"{"id":"impostor","since":""}"#,
    )
    .await;
    let b = Replica::start(&etcd, "b");
    a.stop().await;
    put_request(&client, &keys, "two", request_json(0.1, 1, json!({}))).await;
    let d = wait_decision(&client, &keys, "two", WAIT).await;
    assert_eq!(d.decided_by, "b");
    assert!(
        get(&client, &impostor).await.is_none(),
        "the impostor is gone"
    );
    b.stop().await;
}

/// An engine deleted with etcdctl while it holds placements: its services are placed again
/// elsewhere, its batch placements are lost. An engine rewritten smaller than what it holds:
/// its newest placements move until the rest fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_removed_or_shrunk_under_placements_are_reconciled() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 4.0, 4096.0, &[]).await;
    let replica = Replica::start(&etcd, "r1");
    let mut revs = BTreeMap::new();
    for (id, kind) in [("s1", "service"), ("s2", "service"), ("b1", "batch")] {
        let rev = put_request(
            &client,
            &keys,
            id,
            request_json(1.0, 64, json!({ "type": kind })),
        )
        .await;
        revs.insert(id.to_string(), rev);
    }
    wait_all_decided(&client, &keys, &revs, WAIT).await;
    put_engine(&client, &keys, "e2", 4.0, 4096.0, &[]).await;
    delete_key(&client, keys.engine(&eid("e1"))).await;
    for id in ["s1", "s2"] {
        let d = wait_decision_where(&client, &keys, id, WAIT, "placed on e2", |d| {
            d.status == Status::Placed && engine_of(d).as_deref() == Some("e2")
        })
        .await;
        assert!(d.reason.contains("engine e1 was removed"), "{:?}", d.reason);
    }
    let lost =
        wait_decision_where(&client, &keys, "b1", WAIT, "lost", status_is(Status::Lost)).await;
    assert!(lost.reservation.is_none() && lost.reason.contains("e1 was removed"));

    // e2 holds s1 and s2 (2 cpus); two more make 4. Rewritten with 2 cpus, its two newest move.
    put_engine(&client, &keys, "e3", 4.0, 4096.0, &[]).await;
    for id in ["s3", "s4"] {
        let body = request_json(1.0, 64, json!({ "labels": ["engine==~e2"] }));
        let rev = put_request(&client, &keys, id, body).await;
        revs.insert(id.to_string(), rev);
    }
    wait_all_decided(&client, &keys, &revs, WAIT).await;
    let on_e2: Vec<String> = decisions(&client)
        .await
        .into_iter()
        .filter(|(_, d)| engine_of(d).as_deref() == Some("e2") && d.status == Status::Placed)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(on_e2, vec!["s1", "s2", "s3", "s4"]);
    put_engine(&client, &keys, "e2", 2.0, 4096.0, &[]).await;
    for id in ["s3", "s4"] {
        let d = wait_decision_where(&client, &keys, id, WAIT, "moved to e3", |d| {
            engine_of(d).as_deref() == Some("e3")
        })
        .await;
        assert!(
            d.reason.contains("holds more than its capacity"),
            "{:?}",
            d.reason
        );
    }
    for id in ["s1", "s2"] {
        assert_eq!(
            engine_of(&decisions(&client).await[id]).as_deref(),
            Some("e2")
        );
    }
    replica.stop().await;
    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.unsettled(), 0, "{report:#?}");
}

/// `engine add` refuses to shrink an engine below what it holds unless `--force`; `engine rm`
/// refuses while it holds anything unless `--force`, and removes an empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_add_and_rm_refuse_what_would_overcommit_or_orphan() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    let ep = etcd.endpoint();
    let add = |cpus: &str, extra: &[&str]| {
        let mut args = vec![
            "engine",
            "add",
            "e1",
            "--addr",
            "tcp://e1:2375",
            "--cpus",
            cpus,
            "--memory",
            "4096",
        ];
        args.extend_from_slice(extra);
        cli(&ep, &args)
    };
    assert_eq!(add("4", &[]).0, 0);
    let replica = Replica::start(&etcd, "r1");
    for id in ["a", "b", "c"] {
        put_request(&client, &keys, id, request_json(1.0, 64, json!({}))).await;
        wait_decision_where(
            &client,
            &keys,
            id,
            WAIT,
            "placed",
            status_is(Status::Placed),
        )
        .await;
    }
    let (code, _, err) = add("2", &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("engine e1 is already registered (4 cpus, 4096 MB, labels -)")
            && err.contains("use --replace"),
        "an existing id is refused, saying what it holds: {err}"
    );
    let (code, _, err) = add("2", &["--replace"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("hold 3 cpus") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let engine = get_json(&client, &keys.engine(&eid("e1")))
        .await
        .expect("e1");
    assert_eq!(
        engine["cpus"],
        json!(4.0),
        "unchanged, and not left cordoned: {engine}"
    );
    assert!(engine.get("cordoned").is_none(), "{engine}");
    let (code, out, err) = add("3", &["--replace"]);
    assert_eq!(code, 0, "exactly what it holds fits: {err}");
    assert!(
        out.contains("was 4 cpus, 4096 MB"),
        "says what it replaced: {out}"
    );

    let (code, _, err) = cli(&ep, &["engine", "rm", "e1"]);
    assert_eq!(code, 1);
    assert!(err.contains("still holds 3 reservation(s)"), "{err}");
    assert!(get(&client, &keys.engine(&eid("e1"))).await.is_some());
    for id in ["a", "b", "c"] {
        delete_key(&client, keys.request(&rid(id))).await;
    }
    wait_until("every reservation released", WAIT, || async {
        reservations(&client, &keys).await.is_empty()
    })
    .await;
    let (code, out, err) = cli(&ep, &["engine", "rm", "e1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("engine e1 removed"));
    assert!(get(&client, &keys.engine(&eid("e1"))).await.is_none());
    replica.stop().await;
}

/// A cache whose watch stream breaks resumes from the last revision it applied: history
/// compacted up to there costs no fresh list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_watch_resumes_from_the_last_revision_applied() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    let proxy = Proxy::start(&etcd).await;
    let through_proxy = proxy.connect().await;
    let first = put_request(&client, &keys, "r0", request_json(0.1, 1, json!({}))).await;
    let cache = Cache::new(keys.clone(), 1.0);
    let (shutdown, rx) = watch::channel(false);
    let task = tokio::spawn(cache.clone().run(through_proxy, rx));
    assert!(cache.wait_for(first, WAIT).await);
    let mut last = first;
    for i in 1..5 {
        last = put_request(
            &client,
            &keys,
            &format!("r{i}"),
            request_json(0.1, 1, json!({})),
        )
        .await;
    }
    assert!(cache.wait_for(last, WAIT).await);
    // Everything before the newest revision the cache applied is compacted away, then the
    // stream breaks.
    client
        .kv_client()
        .compact(last, None)
        .await
        .expect("compact");
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.heal();
    let after = put_request(&client, &keys, "r5", request_json(0.1, 1, json!({}))).await;
    assert!(cache.wait_for(after, WAIT).await, "the cache follows again");
    assert_eq!(cache.lists(), 1, "resumed without listing again");
    shutdown.send(true).unwrap();
    task.await.expect("cache task");
}

/// `citadel check` passes a consistent cluster, and names a planted overcommit, a decision
/// without its request and an undecided request, with a non-zero exit, as text or JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_every_violation_and_exits_non_zero() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    let ep = etcd.endpoint();
    put_engine(&client, &keys, "e1", 4.0, 4096.0, &[]).await;
    let replica = Replica::start(&etcd, "r1");
    let rev = put_request(&client, &keys, "ok", request_json(1.0, 64, json!({}))).await;
    wait_all_decided(&client, &keys, &BTreeMap::from([("ok".into(), rev)]), WAIT).await;
    replica.stop().await;
    let (code, out, err) = cli(&ep, &["check", "--settle", "0"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: no engine over capacity"), "{out}");

    // Planted with no controller running, so nothing repairs them.
    let over = put_request(&client, &keys, "over", request_json(4.0, 64, json!({}))).await;
    put_raw(
        &client,
        keys.decision(&rid("over")),
        placed_on_e1(4.0, over),
    )
    .await;
    put_raw(&client, keys.decision(&rid("ghost")), placed_on_e1(0.1, 1)).await;
    put_request(&client, &keys, "waiting", request_json(0.1, 1, json!({}))).await;
    let (code, out, err) = cli(&ep, &["check", "--settle", "0"]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("finding(s)"), "{err}");
    for want in [
        "overcommitted: e1:",
        "decision without request: ghost",
        "undecided: waiting: no decision",
    ] {
        assert!(out.contains(want), "{want} in {out}");
    }
    let (code, out, _) = cli(&ep, &["check", "--settle", "0", "-o", "json"]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&out).expect("json alone on stdout");
    assert_eq!(
        report["overcommitted_engines"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(report["undecided"].as_array().map(Vec::len), Some(1));
    let count = client
        .kv_client()
        .get(
            keys.root(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count");
    assert!(count.count() > 0);
}

/// The value of a key that need not be text, if it exists.
async fn get_bytes(client: &etcd_client::Client, key: &[u8]) -> Option<Vec<u8>> {
    let got = client.kv_client().get(key, None).await.expect("read a key");
    got.kvs().first().map(|kv| kv.value().to_vec())
}

/// Engine records whose id no command line nor Docker label could name (a control character,
/// a NUL) are never scheduled, however large, and `check`, `engine ls` and the log name them.
/// A request key whose last segment cannot be a request id (bytes that are not UTF-8, a `/`)
/// is decided `invalid` at the decision key with the same bytes, and that answer goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_engine_ids_are_never_scheduled_and_odd_request_keys_are_answered() {
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 1.0, 1024.0, &[]).await;
    let huge = json!({"cpus": 64, "memory": 65536}).to_string();
    for odd in ["big\u{1}", "nul\u{0}x", "tab\tx"] {
        put_raw(&client, format!("/citadel/engines/{odd}"), huge.as_str()).await;
    }
    // And one whose id is not text at all.
    put_raw(
        &client,
        b"/citadel/engines/bytes\xff".to_vec(),
        huge.as_str(),
    )
    .await;
    let replica = Replica::start(&etcd, "r1");

    // Only e1 counts: what needs more than it has fits nowhere, whatever the odd records say.
    put_request(&client, &keys, "big", request_json(8.0, 64, json!({}))).await;
    put_request(&client, &keys, "small", request_json(0.5, 64, json!({}))).await;
    let big = wait_decision(&client, &keys, "big", WAIT).await;
    assert_eq!(big.status, Status::Unschedulable, "{big:?}");
    assert!(
        big.reason
            .starts_with("0/1 engines fit: 1 insufficient cpus (needs 8 cpus, largest free "),
        "{big:?}"
    );
    let small = wait_decision(&client, &keys, "small", WAIT).await;
    assert_eq!(engine_of(&small).as_deref(), Some("e1"));

    // Request keys that cannot name a request id: answered at the mirror decision key.
    let cases: [(&[u8], &str); 2] = [
        (
            b"odd\xff\xfe",
            "id: the key's last segment is not UTF-8 text",
        ),
        (b"team/web", "id: id contains '/'"),
    ];
    for (segment, why) in cases {
        let rev = put_raw(
            &client,
            keys.odd_request(segment),
            request_json(0.1, 1, json!({})),
        )
        .await;
        let decision_key = keys.odd_decision(segment);
        let (client, decision_key) = (&client, &decision_key);
        wait_until(
            "an answer at the mirror decision key",
            WAIT,
            || async move { get_bytes(client, decision_key).await.is_some() },
        )
        .await;
        let answer = get_bytes(client, decision_key).await.unwrap_or_default();
        let d: Decision = serde_json::from_slice(&answer).expect("a decision");
        assert_eq!(d.status, Status::Invalid);
        assert_eq!(d.reason, why);
        assert_eq!(d.request_revision, rev);
        assert_eq!(
            d.container.value()["cpus"],
            json!(0.1),
            "it echoes the request"
        );
    }
    let report = assert_invariants(&client, &keys).await;
    assert_eq!(report.unsettled(), 0, "every key answered: {report:#?}");
    assert_eq!(report.ignored_engines.len(), 4, "{report:#?}");

    // check names the odd engines, and exits non-zero for them.
    let (code, out, _) = cli(&etcd.endpoint(), &["check", "--settle", "0"]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(r#"engine never scheduled: "big\u{1}": id: id contains a control character or whitespace"#),
        "{out}"
    );
    // engine ls lists them, escaped, as invalid.
    let (code, out, err) = cli(&etcd.endpoint(), &["engine", "ls"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#""nul\0x""#), "{out}");
    let (_, json_out, _) = cli(&etcd.endpoint(), &["engine", "ls", "-o", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&json_out).expect("json");
    let invalid: Vec<&str> = rows
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["invalid"].is_string())
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(invalid.len(), 4, "{json_out}");
    assert!(invalid.contains(&"bytes\\xff"), "{json_out}");

    // A deleted odd request takes its answer with it.
    delete_key(&client, keys.odd_request(b"odd\xff\xfe")).await;
    let decision_key = keys.odd_decision(b"odd\xff\xfe");
    let (client_ref, decision_key) = (&client, &decision_key);
    wait_until("the answer deleted with its request", WAIT, || async move {
        get_bytes(client_ref, decision_key).await.is_none()
    })
    .await;
    assert_invariants(&client, &keys).await;
    replica.stop().await;
}
