//! `citadel rbac agent ENGINE`: the role of one engine's `citadel agent`, against a real etcd
//! 3.4 with TLS, client certificates naming the user (`--client-cert-auth`) and authentication
//! on. The agent's client (CN=citadel-agent-e1) does everything the agent protocol asks of it
//! (`src/model/agent.rs`) and etcd refuses it, as a permission error and nothing else, every key
//! of another engine (`e10`, whose keys start with `e1`'s text), every request and decision,
//! and writes to its own assignments.
//!
//! Every wait is bounded; nothing here asserts a time.

mod common;

use std::fmt::Debug;
use std::future::Future;
use std::process::Output;
use std::time::Duration;

use citadel::keys::Keys;
use citadel::store::{EtcdConfig, TlsConfig};
use citadel_testkit::etcd::EtcdProcess;
use common::pki::{Ca, Pair, etcd_requiring_client_certs, path};
use common::{citadel, eid, rid, text};
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use tempfile::TempDir;
use tokio::time::timeout;

/// Bound on one etcd call.
const CALL: Duration = Duration::from_secs(10);

/// `what`, bounded.
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    timeout(CALL, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {CALL:?}"))
}

/// `what` succeeded.
async fn ok<T, E: Debug>(what: &str, fut: impl Future<Output = Result<T, E>>) -> T {
    bounded(what, fut)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:?}"))
}

/// `what` was refused by etcd as a permission error: gRPC's PermissionDenied ("etcdserver:
/// permission denied"), not an authentication or any other error.
async fn denied<T: Debug>(what: &str, fut: impl Future<Output = Result<T, etcd_client::Error>>) {
    match bounded(what, fut).await {
        Err(etcd_client::Error::GRpcStatus(s))
            if s.code() == tonic::Code::PermissionDenied
                && s.message().contains("permission denied") => {}
        other => panic!("{what}: should be refused as permission denied, got {other:?}"),
    }
}

fn assert_ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A TLS etcd that names users by their client certificate, with auth on, a root client, and
/// the roles of engines e1 and e10's agents.
/// Fields drop in order: the clients, etcd, then the files it uses.
struct World {
    root: Client,
    agent: Client,
    _etcd: EtcdProcess,
    keys: Keys,
    _dir: TempDir,
}

/// A library client for `etcd` presenting `pair`.
fn cert_config(etcd: &EtcdProcess, pair: &Pair) -> EtcdConfig {
    let mut cfg = common::client_config(etcd);
    cfg.tls = Some(TlsConfig {
        cacert: cfg.tls.and_then(|t| t.cacert),
        identity: Some((pair.cert.clone(), pair.key.clone())),
    });
    cfg
}

impl World {
    async fn start() -> World {
        common::init_tracing();
        let dir = TempDir::new().expect("temp dir");
        let ca = Ca::new(dir.path(), "good").await;
        let server = ca.server().await;
        let root = ca.client("root").await;
        let agent = ca.client("citadel-agent-e1").await;
        let etcd = etcd_requiring_client_certs(&ca, &server).await;
        let as_root = |more: &[&str]| {
            let mut args: Vec<String> = [
                "--etcd",
                &etcd.endpoint(),
                "--cacert",
                path(&ca.cert),
                "--cert",
                path(&root.cert),
                "--key",
                path(&root.key),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(more.iter().map(|s| s.to_string()));
            args
        };
        // Root, the usual roles and authentication on; then the agents' roles, as root.
        let out = citadel(&as_root(&["rbac", "--apply", "--enable-auth"]), &[]).await;
        assert_ok(&out, "rbac --apply --enable-auth");
        let out = citadel(&as_root(&["rbac", "agent", "e1", "--apply"]), &[]).await;
        let said = assert_ok(&out, "rbac agent e1 --apply");
        for line in [
            "role citadel-agent-e1: added",
            "role citadel-agent-e1: readwrite on key /citadel/engines/e1\n",
            "role citadel-agent-e1: readwrite on key /citadel/health/e1\n",
            "role citadel-agent-e1: read on keys under /citadel/assignments/e1/\n",
            "role citadel-agent-e1: write on keys under /citadel/runs/e1/\n",
            "user citadel-agent-e1: added without a password (a client certificate with CN=citadel-agent-e1)",
            "user citadel-agent-e1: has role citadel-agent-e1",
        ] {
            assert!(said.contains(line), "missing {line:?}:\n{said}");
        }
        let out = citadel(&as_root(&["rbac", "agent", "e1", "--apply"]), &[]).await;
        let said = assert_ok(&out, "rbac agent e1 --apply, again");
        assert!(
            said.contains("role citadel-agent-e1: exists")
                && said.contains("user citadel-agent-e1: exists"),
            "{said}"
        );
        assert!(!said.contains("added"), "{said}");
        let out = citadel(&as_root(&["rbac", "agent", "e10", "--apply"]), &[]).await;
        assert_ok(&out, "rbac agent e10 --apply");

        let root = common::connect_with(&cert_config(&etcd, &root)).await;
        let agent = common::connect_with(&cert_config(&etcd, &agent)).await;
        World {
            root,
            agent,
            _etcd: etcd,
            keys: Keys::default(),
            _dir: dir,
        }
    }

    /// What the leader and the operator wrote, as root: an assignment for each engine, a
    /// request and its decision, e10's record and health.
    async fn the_cluster_has_keys_of_both_engines(&self) {
        let k = &self.keys;
        let mut kv = self.root.kv_client();
        for key in [
            k.assignment(&eid("e1"), &rid("r1")),
            k.assignment(&eid("e10"), &rid("r1")),
            k.request(&rid("r1")),
            k.decision(&rid("r1")),
            k.engine(&eid("e10")),
            k.health(&eid("e10")),
        ] {
            ok(&format!("root: put {key}"), kv.put(key.clone(), "{}", None)).await;
        }
    }

    /// The agent registers its engine and reads it back.
    async fn the_agent_registers_its_engine(&self) {
        let key = self.keys.engine(&eid("e1"));
        let mut kv = self.agent.kv_client();
        ok(
            "put own engine",
            kv.put(key.clone(), r#"{"agent":{}}"#, None),
        )
        .await;
        let got = ok("get own engine", kv.get(key, None)).await;
        assert_eq!(got.kvs().len(), 1);
    }

    /// It grants a lease, puts its health on it, keeps it alive, reads its time to live (as a
    /// restart does to adopt it) and reads its health back. Returns the lease.
    async fn the_agent_keeps_its_health_on_its_own_lease(&self) -> i64 {
        let key = self.keys.health(&eid("e1"));
        let mut lease = self.agent.lease_client();
        let id = ok("lease grant", lease.grant(15, None)).await.id();
        let mut kv = self.agent.kv_client();
        ok(
            "put own health on the lease",
            kv.put(key.clone(), "{}", Some(PutOptions::new().with_lease(id))),
        )
        .await;
        let (mut keeper, mut stream) = ok("lease keep-alive", lease.keep_alive(id)).await;
        ok("send a keep-alive", keeper.keep_alive()).await;
        let answer = ok("a keep-alive's answer", stream.message())
            .await
            .expect("the keep-alive stream ended");
        assert_eq!(answer.id(), id);
        assert!(answer.ttl() > 0, "the lease expired: {answer:?}");
        let ttl = ok("lease time-to-live", lease.time_to_live(id, None)).await;
        assert!(ttl.ttl() > 0, "{ttl:?}");
        let got = ok("get own health", kv.get(key, None)).await;
        assert_eq!(got.kvs().first().map(|kv| kv.lease()), Some(id));
        id
    }

    /// It ranges and watches its assignments, and sees a new one.
    async fn the_agent_ranges_and_watches_its_assignments(&self) {
        let k = &self.keys;
        let own = k.assignments_of(&eid("e1"));
        let mut kv = self.agent.kv_client();
        let got = ok(
            "range own assignments",
            kv.get(own.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await;
        let got: Vec<_> = got.kvs().iter().map(|kv| kv.key().to_vec()).collect();
        assert_eq!(got, [k.assignment(&eid("e1"), &rid("r1")).into_bytes()]);

        let mut watch = self.agent.watch_client();
        let mut stream = ok(
            "watch own assignments",
            watch.watch(own, Some(WatchOptions::new().with_prefix())),
        )
        .await;
        let created = ok("the watch's first answer", stream.message())
            .await
            .expect("the watch ended");
        assert!(created.created() && !created.canceled(), "{created:?}");
        let new = k.assignment(&eid("e1"), &rid("r2"));
        ok(
            "root: put a new assignment",
            self.root.kv_client().put(new.clone(), "{}", None),
        )
        .await;
        let event = ok("the watch's event", stream.message())
            .await
            .expect("the watch ended");
        let keys: Vec<_> = event
            .events()
            .iter()
            .filter_map(|e| e.kv().map(|kv| kv.key().to_vec()))
            .collect();
        assert_eq!(keys, [new.into_bytes()], "{event:?}");
    }

    /// It reports a run in a txn that compares its assignment's mod revision: it lands when
    /// the revision is current, and not (without an error) when it is stale.
    async fn the_agent_reports_runs_against_its_assignment(&self) {
        let k = &self.keys;
        let assignment = k.assignment(&eid("e1"), &rid("r1"));
        let run = k.run(&eid("e1"), &rid("r1"));
        let mut kv = self.agent.kv_client();
        let got = ok("get own assignment", kv.get(assignment.clone(), None)).await;
        let rev = got.kvs()[0].mod_revision();
        let report = |rev| {
            Txn::new()
                .when([Compare::mod_revision(
                    assignment.clone(),
                    CompareOp::Equal,
                    rev,
                )])
                .and_then([TxnOp::put(run.clone(), "{}", None)])
        };
        let done = ok("report a run", kv.txn(report(rev))).await;
        assert!(done.succeeded(), "the report's compare failed");
        let stale = ok("report a run, stale", kv.txn(report(rev - 1))).await;
        assert!(!stale.succeeded(), "a stale report landed");
        let got = ok("root: get the report", self.root.kv_client().get(run, None)).await;
        assert_eq!(got.kvs().len(), 1);
    }

    /// Nothing of e10, no request or decision, no write to its assignments: each refused as
    /// a permission error.
    async fn the_agent_is_refused_everything_else(&self, own_lease: i64) {
        let k = &self.keys;
        let (e1, e10, r1) = (eid("e1"), eid("e10"), rid("r1"));
        let mut kv = self.agent.kv_client();
        let prefix = || Some(GetOptions::new().with_prefix());

        // Reads.
        for (what, key, opts) in [
            ("range e10's assignments", k.assignments_of(&e10), prefix()),
            ("get e10's assignment", k.assignment(&e10, &r1), None),
            ("range every assignment", k.assignments(), prefix()),
            ("get a request", k.request(&r1), None),
            ("range the requests", k.requests(), prefix()),
            ("get a decision", k.decision(&r1), None),
            ("get e10's health", k.health(&e10), None),
            ("range everything", k.root().to_string(), prefix()),
        ] {
            denied(what, kv.get(key, opts)).await;
        }

        // Writes.
        for (what, key) in [
            ("put e10's health", k.health(&e10)),
            ("put e10's engine", k.engine(&e10)),
            ("put a run of e10", k.run(&e10, &rid("x"))),
            ("put a request", k.request(&rid("x"))),
            ("put a decision", k.decision(&rid("x"))),
            ("put an assignment of its own", k.assignment(&e1, &rid("x"))),
            ("put beside its engine", format!("{}x", k.engine(&e1))),
        ] {
            denied(what, kv.put(key, "{}", None)).await;
        }
        denied(
            "delete its own assignment",
            kv.delete(k.assignment(&e1, &r1), None),
        )
        .await;

        // A report compared against e10's assignment: the compare is a read of e10's key.
        let txn = Txn::new()
            .when([Compare::mod_revision(
                k.assignment(&e10, &r1),
                CompareOp::Greater,
                0,
            )])
            .and_then([TxnOp::put(k.run(&e1, &r1), "{}", None)]);
        denied("a txn comparing e10's assignment", kv.txn(txn)).await;

        // A watch of e10's assignments is created canceled, for a permission error.
        let mut watch = self.agent.watch_client();
        let mut stream = ok(
            "watch e10's assignments (the stream)",
            watch.watch(
                k.assignments_of(&e10),
                Some(WatchOptions::new().with_prefix()),
            ),
        )
        .await;
        let answer = ok("the refused watch's answer", stream.message())
            .await
            .expect("the watch ended");
        assert!(
            answer.canceled() && answer.cancel_reason().contains("permission denied"),
            "watch of e10's assignments: {answer:?}"
        );

        // e10's health on a lease of e10's: the agent can neither revoke that lease (which
        // would delete e10's health) nor put its own health on it.
        let theirs = ok(
            "root: lease grant",
            self.root.lease_client().grant(60, None),
        )
        .await
        .id();
        ok(
            "root: put e10's health on its lease",
            self.root.kv_client().put(
                k.health(&e10),
                "{}",
                Some(PutOptions::new().with_lease(theirs)),
            ),
        )
        .await;
        denied(
            "revoke e10's lease",
            self.agent.lease_client().revoke(theirs),
        )
        .await;
        denied(
            "put its health on e10's lease",
            kv.put(
                k.health(&e1),
                "{}",
                Some(PutOptions::new().with_lease(theirs)),
            ),
        )
        .await;

        // Its own lease it may revoke (a clean stop): its health goes with it.
        ok(
            "revoke its own lease",
            self.agent.lease_client().revoke(own_lease),
        )
        .await;
        let got = ok(
            "root: get e1's health",
            self.root.kv_client().get(k.health(&e1), None),
        )
        .await;
        assert!(got.kvs().is_empty(), "e1's health outlived its lease");
        let got = ok(
            "root: get e10's health",
            self.root.kv_client().get(k.health(&e10), None),
        )
        .await;
        assert_eq!(got.kvs().len(), 1, "e10's health is gone");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_touches_its_own_keys_and_nothing_else() {
    let w = World::start().await;
    w.the_cluster_has_keys_of_both_engines().await;
    w.the_agent_registers_its_engine().await;
    let lease = w.the_agent_keeps_its_health_on_its_own_lease().await;
    w.the_agent_ranges_and_watches_its_assignments().await;
    w.the_agent_reports_runs_against_its_assignment().await;
    w.the_agent_is_refused_everything_else(lease).await;
}
