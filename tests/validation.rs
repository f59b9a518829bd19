//! Validation as the user meets it: `citadel submit` and `citadel plan` refuse what the leader
//! would decide `invalid`, in the leader's words, before anything is written; the leader's
//! reasons name the field and the rule without quoting the value back; an `unschedulable`
//! reason gives the sizes that failed. Each on real etcd, with the real binary and a real
//! controller deciding the same bytes written raw, as `etcdctl put` would.

mod common;

use citadel::model::Status;
use etcd_client::Client;
use serde_json::json;

use common::*;

/// Engines e1 (zone a) and e2 (zone b), 4 cpus and 4096 MB each, and a controller.
async fn cluster(etcd: &citadel_testkit::etcd::EtcdProcess) -> (Client, Replica) {
    let client = connect(etcd).await;
    let keys = keys();
    put_engine(&client, &keys, "e1", 4.0, 4096.0, &["zone=a"]).await;
    put_engine(&client, &keys, "e2", 4.0, 4096.0, &["zone=b"]).await;
    let replica = Replica::start(etcd, "r1");
    wait_leader(&client, &keys, WAIT).await;
    (client, replica)
}

/// The leader's decision on `body` written raw under `id`, once it has one of `status`.
async fn leader_decides(client: &Client, id: &str, body: &str, status: Status) -> String {
    let keys = keys();
    put_request(client, &keys, id, body.to_string()).await;
    let d = wait_decision_where(client, &keys, id, WAIT, "its decision", |d| {
        d.status == status
    })
    .await;
    d.reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_refuses_what_the_leader_would_call_invalid_in_its_words() {
    let etcd = start_etcd().await;
    let (client, replica) = cluster(&etcd).await;
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    // (the request's extra fields, the reason both give)
    let cases = [
        (
            json!({"labels": ["zone=a"]}),
            "labels[0]: use ==: did you mean zone==a?",
        ),
        (
            json!({"labels": ["gpu", "zone=="]}),
            "labels[1]: the value after == is empty: write key==value, or the key alone for any value",
        ),
        (
            json!({"affinity": ["request=web-1"]}),
            "affinity[0]: use ==: did you mean request==web-1?",
        ),
        (
            json!({"affinity": ["zone==a"]}),
            "affinity[0]: the key is request or image",
        ),
    ];
    for (n, (extra, reason)) in cases.into_iter().enumerate() {
        let body = request_json(1.0, 64, extra);
        let file = request_file(dir.path(), &format!("r{n}.json"), &body);
        let id = format!("submitted-{n}");
        let (code, out, err) = cli(&ep, &["submit", &file, "--id", &id]);
        assert_eq!(
            code, 4,
            "{body}: exit 4, invalid; stdout {out}, stderr {err}"
        );
        assert!(
            err.contains(&format!("invalid request: {reason}")),
            "{body}: {err}"
        );
        assert!(
            get(&client, &keys().request(&rid(&id))).await.is_none(),
            "{body}: nothing written"
        );
        let (code, out, _) = cli(&ep, &["plan", &file]);
        assert_eq!(code, 4, "{body}: plan says invalid too: {out}");
        // The same bytes, written raw: the leader says the same.
        let decided = leader_decides(&client, &format!("raw-{n}"), &body, Status::Invalid).await;
        assert_eq!(decided, reason, "{body}");
    }
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comma_in_a_constraint_is_warned_about_and_left_to_the_leader() {
    let etcd = start_etcd().await;
    let (client, replica) = cluster(&etcd).await;
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let body = request_json(1.0, 64, json!({"labels": ["zone==a,disk==ssd"]}));
    let file = request_file(dir.path(), "comma.json", &body);
    let warning = "citadel: warning: labels[0]: a comma does not join constraints";
    let (code, out, err) = cli(&ep, &["plan", &file]);
    assert_eq!(
        code, 3,
        "unschedulable, as the value is `a,disk==ssd`: {out}"
    );
    assert!(err.contains(warning), "plan: {err}");
    let (code, out, err) = cli(&ep, &["submit", &file, "--id", "comma", "--wait"]);
    // Accepted, as the leader accepts it: a label value may hold a comma.
    assert_eq!(code, 3, "written and decided unschedulable: {out} {err}");
    assert!(err.contains(warning), "submit: {err}");
    assert!(
        err.contains("one entry per constraint"),
        "says what to write: {err}"
    );
    let d = decision(&client, &keys(), "comma").await.expect("decided");
    assert_eq!(d.status, Status::Unschedulable);
    // One entry per constraint: no warning.
    let split = request_json(1.0, 64, json!({"labels": ["zone==a", "zone!=b"]}));
    let file = request_file(dir.path(), "split.json", &split);
    let (code, _, err) = cli(&ep, &["submit", &file, "--id", "split"]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reason_names_the_field_and_rule_never_the_value() {
    let etcd = start_etcd().await;
    let (client, replica) = cluster(&etcd).await;
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let evil = "<script>alert(1)</script>";
    // (the request's extra fields, the start of the reason)
    let cases = [
        (
            json!({"labels": [format!("zone={evil}")]}),
            "labels[0]: use ==: key==value",
        ),
        (
            json!({"labels": [format!("{evil}==a")]}),
            "labels[0]: label keys are",
        ),
        (
            json!({"labels": [format!("zone==/{evil}(/")]}),
            "labels[0]: the /regular expression/ does not compile",
        ),
        (
            json!({"bind_ports": [{"port": 80, "proto": evil}]}),
            "bind_ports[0]",
        ),
        (
            json!({"restart_policy": {"name": evil}}),
            "restart_policy: the name is not",
        ),
        (json!({"cpuset": evil}), "cpuset: not a list of cpus"),
        (
            json!({"disk": evil}),
            "disk: invalid value, expected a number",
        ),
        (
            json!({"group": "g", "spread": {"over": evil}}),
            "spread.over: not a label key",
        ),
        (json!({"type": evil}), "type: no scheduler for this type"),
    ];
    for (n, (extra, start)) in cases.into_iter().enumerate() {
        let body = request_json(1.0, 64, extra);
        let reason = leader_decides(&client, &format!("evil-{n}"), &body, Status::Invalid).await;
        assert!(reason.starts_with(start), "{body}: {reason}");
        assert!(
            !reason.contains("script"),
            "{body}: the value is echoed: {reason}"
        );
        if n < 3 {
            // What submit says is the leader's reason.
            let file = request_file(dir.path(), &format!("e{n}.json"), &body);
            let (code, _, err) = cli(&ep, &["submit", &file]);
            assert_eq!(code, 4, "{body}: {err}");
            assert!(err.contains(&reason), "{body}: {err}");
        }
    }
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unschedulable_reason_gives_the_sizes_that_failed() {
    let etcd = start_etcd().await;
    let (client, replica) = cluster(&etcd).await;
    let keys = keys();
    let ep = etcd.endpoint();
    // e1 has 4096 - 1024 MB free, e2 all 4096 MB but 1.5 of its 4 cpus.
    put_request(
        &client,
        &keys,
        "half",
        request_json(2.5, 64, json!({"labels": ["zone==b"]})),
    )
    .await;
    put_request(
        &client,
        &keys,
        "some",
        request_json(0.5, 1024, json!({"labels": ["zone==a"]})),
    )
    .await;
    for id in ["half", "some"] {
        wait_decision_where(&client, &keys, id, WAIT, "placed", |d| {
            d.status == Status::Placed
        })
        .await;
    }
    let body = request_json(1.0, 8192, json!({}));
    let want = "0/2 engines fit: 2 insufficient memory (needs 8192MB, largest free 4032MB)";
    let reason = leader_decides(&client, "big", &body, Status::Unschedulable).await;
    assert_eq!(reason, want);
    let body = request_json(2.0, 512, json!({"labels": ["zone==b"]}));
    let reason = leader_decides(&client, "wide", &body, Status::Unschedulable).await;
    assert_eq!(
        reason,
        "0/2 engines fit: 1 constraint zone==b, 1 insufficient cpus (needs 2 cpus, largest free 1.5 cpus)"
    );
    // A third engine too small for it: the parked request is looked at again, and its reason
    // counts the engine.
    put_engine(&client, &keys, "e3", 2.0, 2048.0, &["zone=c"]).await;
    let want3 = "0/3 engines fit: 3 insufficient memory (needs 8192MB, largest free 4032MB)";
    let d = wait_decision_where(&client, &keys, "big", WAIT, "a reason counting e3", |d| {
        d.reason == want3
    })
    .await;
    assert_eq!(d.status, Status::Unschedulable);
    // plan says what the leader says.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = request_file(dir.path(), "big.json", &request_json(1.0, 8192, json!({})));
    let (code, out, _) = cli(&ep, &["plan", &file]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains(want3), "{out}");
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_names_the_request_by_its_id_or_its_file() {
    let etcd = start_etcd().await;
    let (client, replica) = cluster(&etcd).await;
    let ep = etcd.endpoint();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = request_file(
        dir.path(),
        "web.json",
        &request_json(1.0, 64, json!({"labels": ["zone==a"]})),
    );
    let (code, out, err) = cli(&ep, &["plan", &file]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would place web on e1"), "{out}");
    let (code, out, err) = cli(&ep, &["plan", &file, "--id", "web-7"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would place web-7 on e1"), "{out}");
    // A file whose name is no id: the request.
    let file = request_file(
        dir.path(),
        "my web.json",
        &request_json(1.0, 64, json!({"labels": ["zone==a"]})),
    );
    let (code, out, err) = cli(&ep, &["plan", &file]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would place the request on e1"), "{out}");
    assert!(
        get(&client, &keys().request(&rid("web"))).await.is_none(),
        "plan writes nothing"
    );
    replica.stop().await;
}
