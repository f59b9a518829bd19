//! The leader's side of the agent protocol, against a real etcd, with the test playing two
//! agents by the protocol's own keys: assignments written in the placement's own transaction,
//! failed starts and lost engines placed again elsewhere, batch exits freeing their
//! reservation, and every withdrawal in the transaction that decides it.

mod common;

use std::time::Duration;

use citadel::model::{Assignment, ContainerState, RunReport, Status};
use common::*;
use etcd_client::{Client, PutOptions};

const WAIT: Duration = Duration::from_secs(20);

/// Registers `id` as an agent would, with its health on a fresh lease of `ttl` s; returns
/// the lease.
async fn agent_engine(client: &Client, id: &str, ttl: i64) -> i64 {
    let mut engine = engine_json(id, 4.0, 4096.0, &[]);
    engine["addr"] = serde_json::json!(format!("agent://{id}"));
    engine["agent"] = serde_json::json!({"host": id, "version": "test"});
    put_engine_json(client, &keys(), id, &engine).await;
    let lease = client
        .lease_client()
        .grant(ttl, None)
        .await
        .expect("lease")
        .id();
    let health = serde_json::json!({
        "engine": id, "last_contact": "2026-12-06T00:00:00Z", "cpus_used": 0.0,
        "memory_used_mb": 0.0, "containers_running": 0, "checked_by": format!("agent@{id}"),
        "agent": {"host": id, "pid": 1, "instance": "test"},
    });
    client
        .kv_client()
        .put(
            keys().health(&eid(id)),
            health.to_string(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("health");
    lease
}

/// The assignment of `id` on `engine`, with its mod revision, if there is one.
async fn assignment(client: &Client, engine: &str, id: &str) -> Option<(Assignment, i64)> {
    let got = get(client, &keys().assignment(&eid(engine), &rid(id))).await?;
    let a: Assignment = serde_json::from_slice(&got.value).expect("an assignment");
    Some((a, got.mod_revision))
}

/// Reports on `id` as `engine`'s agent would.
async fn report(
    client: &Client,
    engine: &str,
    id: &str,
    rev: i64,
    edit: impl FnOnce(&mut RunReport),
) {
    let mut r = RunReport {
        request: id.into(),
        engine: engine.into(),
        assignment_revision: rev,
        updated_at: "2026-12-06T00:00:00Z".into(),
        ..RunReport::default()
    };
    edit(&mut r);
    put_raw(
        client,
        keys().run(&eid(engine), &rid(id)),
        serde_json::to_vec(&r).expect("report"),
    )
    .await;
}

#[tokio::test]
async fn agents_get_their_work_in_the_placements_own_txn_and_their_reports_move_it() {
    init_tracing();
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let k = keys();
    agent_engine(&client, "a1", 60).await;
    agent_engine(&client, "a2", 60).await;
    // A plain engine, without an agent: never assigned anything (too small for `web`).
    put_engine(&client, &k, "plain", 0.2, 4096.0, &[]).await;
    let replica = Replica::start(&etcd, "r1");

    // A plain placement writes nothing for the agents.
    put_request(
        &client,
        &k,
        "quiet",
        request_json(0.1, 16, serde_json::json!({})),
    )
    .await;
    let d = wait_decision(&client, &k, "quiet", WAIT).await;
    assert_eq!(d.status, Status::Placed, "{}", d.reason);
    assert!(get_prefix(&client, &k.assignments()).await.is_empty());

    // A launched one on an agent's engine: its assignment commits with the decision.
    let rev = put_request(
        &client,
        &k,
        "web",
        request_json(0.5, 64, serde_json::json!({"launch": true})),
    )
    .await;
    let d = wait_decision_where(&client, &k, "web", WAIT, "placed", |d| {
        d.status == Status::Placed
    })
    .await;
    let first = placed_engine(&d);
    assert_ne!(first, "plain");
    let (a, a_rev) = assignment(&client, &first, "web")
        .await
        .expect("an assignment");
    let decision_rev = get(&client, &k.decision(&rid("web")))
        .await
        .expect("decision")
        .mod_revision;
    assert_eq!(
        a_rev, decision_rev,
        "the assignment commits in the placement's transaction"
    );
    assert_eq!(
        (a.request.as_str(), a.engine.as_str(), a.request_revision),
        ("web", first.as_str(), rev)
    );
    let spec: serde_json::Value = serde_json::from_str(a.spec.get()).expect("spec");
    assert_eq!(spec["launch"], true);

    // The container cannot start there: placed again elsewhere, the engine excluded, and the
    // old assignment withdrawn in the same transaction.
    report(&client, &first, "web", a_rev, |r| {
        r.error = "no such image".into()
    })
    .await;
    let d = wait_decision_where(&client, &k, "web", WAIT, "placed elsewhere", |d| {
        d.status == Status::Placed && placed_engine(d) != first
    })
    .await;
    let second = placed_engine(&d);
    assert!(
        d.run.as_ref().is_some_and(|r| r.attempts.len() == 1),
        "{d:?}"
    );
    assert!(
        assignment(&client, &first, "web").await.is_none(),
        "withdrawn from {first}"
    );
    assert!(
        get(&client, &k.run(&eid(&first), &rid("web")))
            .await
            .is_none(),
        "its report too"
    );
    let (_, rev2) = assignment(&client, &second, "web")
        .await
        .expect("assigned to the next agent");
    report(&client, &second, "web", rev2, |r| {
        r.container_id = "c0ffee".into();
        r.state = Some(ContainerState::Running);
    })
    .await;
    // A running container changes no decision: the report is its record.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = decision(&client, &k, "web").await.expect("decision");
    assert_eq!(
        (again.status, placed_engine(&again)),
        (Status::Placed, second.clone())
    );

    // The second fails too, and no engine is left that could take it: `failed`, with both
    // attempts named.
    report(&client, &second, "web", rev2, |r| {
        r.error = "bad entrypoint".into()
    })
    .await;
    let d = wait_decision_where(&client, &k, "web", WAIT, "failed", |d| {
        d.status == Status::Failed
    })
    .await;
    assert!(
        d.reason.contains("no other engine can take it"),
        "{}",
        d.reason
    );
    assert!(
        d.run.as_ref().is_some_and(|r| r.attempts.len() == 2),
        "{d:?}"
    );
    assert!(
        get_prefix(&client, &k.assignments()).await.is_empty(),
        "no agent holds it"
    );

    // Deleting the request withdraws its assignment with the decision.
    delete_key(&client, k.request(&rid("web"))).await;
    wait_until("the assignment is withdrawn", WAIT, || async {
        get_prefix(&client, &k.assignments()).await.is_empty()
            && get_prefix(&client, &k.runs()).await.is_empty()
            && get(&client, &k.decision(&rid("web"))).await.is_none()
    })
    .await;
    replica.stop().await;
}

#[tokio::test]
async fn a_lost_agent_moves_its_services_and_loses_its_batch_jobs() {
    init_tracing();
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let k = keys();
    let lease = agent_engine(&client, "a1", 60).await;
    let replica = Replica::start(&etcd, "r1");
    let launched =
        |kind: &str| request_json(0.5, 64, serde_json::json!({"launch": true, "type": kind}));
    put_request(&client, &k, "svc", launched("service")).await;
    put_request(&client, &k, "job", launched("batch")).await;
    put_request(&client, &k, "done", launched("batch")).await;
    for id in ["svc", "job", "done"] {
        wait_decision_where(&client, &k, id, WAIT, "placed", |d| {
            d.status == Status::Placed
        })
        .await;
        let (_, rev) = assignment(&client, "a1", id).await.expect("assigned");
        report(&client, "a1", id, rev, |r| {
            r.container_id = format!("c-{id}");
            r.state = Some(ContainerState::Running);
        })
        .await;
    }
    // A batch job that exits frees its reservation; its container stays assigned.
    let (_, rev) = assignment(&client, "a1", "done").await.expect("assigned");
    report(&client, "a1", "done", rev, |r| {
        r.container_id = "c-done".into();
        r.state = Some(ContainerState::Exited);
        r.exit_code = Some(3);
    })
    .await;
    let d = wait_decision_where(&client, &k, "done", WAIT, "exited", |d| {
        d.status == Status::Exited
    })
    .await;
    assert!(
        d.reservation.is_none() && d.reason.contains("code 3"),
        "{d:?}"
    );
    assert!(assignment(&client, "a1", "done").await.is_some());

    // A second agent arrives; then the first one's lease ends (its agent died).
    agent_engine(&client, "a2", 60).await;
    client.lease_client().revoke(lease).await.expect("revoke");
    let d = wait_decision_where(&client, &k, "svc", WAIT, "placed on a2", |d| {
        d.status == Status::Placed && placed_engine(d) == "a2"
    })
    .await;
    assert_eq!(
        d.run.as_ref().map(|r| r.lost.clone()),
        Some(vec!["a1".to_string()])
    );
    assert!(assignment(&client, "a2", "svc").await.is_some());
    assert!(
        assignment(&client, "a1", "svc").await.is_none(),
        "withdrawn from the lost engine"
    );
    let d = wait_decision_where(&client, &k, "job", WAIT, "lost", |d| {
        d.status == Status::Lost
    })
    .await;
    assert!(d.reservation.is_none(), "{d:?}");
    replica.stop().await;
}

#[tokio::test]
async fn submit_waits_for_the_agents_report_and_status_shows_it() {
    init_tracing();
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    agent_engine(&client, "a1", 60).await;
    let replica = Replica::start(&etcd, "r1");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = commands::request_file(
        dir.path(),
        "web.json",
        &request_json(0.5, 64, serde_json::json!({"launch": true})),
    );
    let endpoint = etcd.endpoint();
    let submit = {
        let (endpoint, file) = (endpoint.clone(), file.clone());
        tokio::task::spawn_blocking(move || {
            commands::cli(
                &endpoint,
                &[
                    "submit",
                    &file,
                    "--id",
                    "web",
                    "--wait=running",
                    "--timeout",
                    "20",
                ],
            )
        })
    };
    let assigned = wait_until("web is assigned to a1", WAIT, || async {
        assignment(&client, "a1", "web").await.is_some()
    });
    assigned.await;
    let (_, rev) = assignment(&client, "a1", "web").await.expect("assigned");
    report(&client, "a1", "web", rev, |r| {
        r.container_id = "0123456789abcdef".into();
        r.container_name = "citadel-web".into();
        r.state = Some(ContainerState::Running);
    })
    .await;
    let (code, out, err) = submit.await.expect("submit");
    assert_eq!(code, 0, "{out}{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("the decision, as JSON");
    assert_eq!(shown["run"]["state"], "running", "{out}");
    assert_eq!(shown["run"]["container_id"], "0123456789abcdef");
    let (code, out, err) = commands::cli(&endpoint, &["status", "web"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("container running 0123456789ab citadel-web"),
        "{out}"
    );
    replica.stop().await;
}

#[tokio::test]
async fn a_placement_an_older_leader_made_without_an_assignment_gets_one() {
    init_tracing();
    let etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let k = keys();
    agent_engine(&client, "e1", 60).await;
    // What a leader of the previous release leaves: a placement to be launched on an agent's
    // engine, and no assignment (it knows no agents).
    let rev = put_request(
        &client,
        &k,
        "old",
        request_json(0.5, 64, serde_json::json!({"launch": true})),
    )
    .await;
    put_raw(&client, k.decision(&rid("old")), placed_on_e1(0.5, rev)).await;
    let replica = Replica::start(&etcd, "r1");
    wait_until("the new leader assigns it", WAIT, || async {
        assignment(&client, "e1", "old").await.is_some()
    })
    .await;
    let (a, _) = assignment(&client, "e1", "old").await.expect("assigned");
    assert_eq!(a.request_revision, rev);
    let d = decision(&client, &k, "old").await.expect("decision");
    assert_eq!(
        d.decided_by, "a-leader",
        "the placement itself is kept: {d:?}"
    );
    replica.stop().await;
}
