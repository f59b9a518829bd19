//! citadel against an etcd with TLS and authentication: client certificates whose CN names
//! the user (`--client-cert-auth`), passwords over server-only TLS, the roles of
//! `citadel rbac`, and one plain line (and a non-zero exit) for each way a connection is
//! refused.
//!
//! Every etcd is a real one started by the test (`citadel_testkit::etcd`), with certificates
//! made by `openssl` in the test's temporary directory (`common::pki`). Nothing here asserts
//! a time; every wait is bounded.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use citadel::keys::Keys;
use citadel::rbac::{self, Role};
use citadel::store::{EtcdConfig, TlsConfig};
use citadel_testkit::etcd::{EtcdOptions, EtcdProcess, EtcdTls};
use common::pki::{Ca, Pair, etcd_requiring_client_certs, path};
use common::{
    CMD_TIMEOUT, Replica, assert_no_dump, assert_one_line, citadel, citadel_cmd, eid, request_json,
    rid, text,
};
use etcd_client::Client;
use serde_json::json;
use tempfile::TempDir;
use tokio::process::Command;
use tokio::time::timeout;

/// Bound on a controller that should give up by itself (a few tries with backoff).
const GIVE_UP_WITHIN: Duration = Duration::from_secs(120);

/// A user's request file in `dir`: 0.5 cpus, 64 MB, a service.
fn request_file(dir: &Path) -> String {
    common::request_file(dir, "request.json", &request_json(0.5, 64, json!({})))
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A controller given these settings gives up by itself, with a non-zero exit and the cause
/// as its last line.
async fn assert_controller_gives_up(conn: &[String], env: &[(&str, &str)], cause: &str) {
    let mut args = conn.to_vec();
    args.extend(
        [
            "controller",
            "--id",
            "doomed",
            "--nice",
            "0",
            "--listen",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let run = citadel_cmd(&args, env).env("RUST_LOG", "warn").output();
    let out = timeout(GIVE_UP_WITHIN, run)
        .await
        .unwrap_or_else(|_| {
            panic!("a controller with {args:?} still runs after {GIVE_UP_WITHIN:?}")
        })
        .expect("run the controller");
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "controller {args:?} exited 0:\n{stderr}"
    );
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("citadel: error: ") && last.contains(cause),
        "controller {args:?}: expected {cause:?} as the last line:\n{stderr}"
    );
    assert_no_dump(&stderr, "controller");
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A way to be refused: what it is, the global flags and environment, and the cause the
/// error must name.
type Refusal<'a> = (&'a str, Vec<String>, &'a [(&'a str, &'a str)], String);

/// The global flags to reach `etcd` with `ca` and, if given, a client certificate.
fn conn(etcd: &EtcdProcess, ca: &Path, pair: Option<&Pair>) -> Vec<String> {
    let mut args = strings(&["--etcd", &etcd.endpoint(), "--cacert", path(ca)]);
    if let Some(p) = pair {
        args.extend(strings(&["--cert", path(&p.cert), "--key", path(&p.key)]));
    }
    args
}

fn with(mut base: Vec<String>, more: &[&str]) -> Vec<String> {
    base.extend(strings(more));
    base
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

/// Puts `key` as the client's user, which etcd must refuse as a permission error.
async fn assert_put_denied(client: &Client, key: &str, who: &str) {
    let mut kv = client.kv_client();
    let res = timeout(Duration::from_secs(10), kv.put(key, "{}", None))
        .await
        .unwrap_or_else(|_| panic!("{who}: put {key} got no answer"));
    match res {
        Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::PermissionDenied => {}
        other => panic!("{who}: put {key} should be a permission error, got {other:?}"),
    }
}

/// `--etcd … engine add ID --addr tcp://x:2375 --cpus CPUS --memory MB` after `conn`.
fn engine_add(conn: Vec<String>, id: &str, cpus: &str, memory: &str) -> Vec<String> {
    with(
        conn,
        &[
            "engine",
            "add",
            id,
            "--addr",
            "tcp://x:2375",
            "--cpus",
            cpus,
            "--memory",
            memory,
        ],
    )
}

/// `submit REQUEST --id ID --wait --timeout 30` after `conn`.
fn submit_wait(conn: Vec<String>, request: &str, id: &str) -> Vec<String> {
    with(
        conn,
        &["submit", request, "--id", id, "--wait", "--timeout", "30"],
    )
}

/// An etcd that demands client certificates and names each user by its certificate's CN, with
/// the certificates of a CA it trusts and of a stranger CA.
/// Fields drop in order: the controller, etcd, then the files they use.
struct CertAuth {
    /// The controller (the real binary) placing requests, once started.
    replica: Option<tokio::process::Child>,
    etcd: EtcdProcess,
    ca: Ca,
    root: Pair,
    controller: Pair,
    alice: Pair,
    bob: Pair,
    stranger_ca: Ca,
    stranger_alice: Pair,
    keys: Keys,
    dir: TempDir,
}

impl CertAuth {
    /// The certificates, and etcd started with `--client-cert-auth` on `https://`.
    async fn start() -> CertAuth {
        common::init_tracing();
        let dir = TempDir::new().expect("temp dir");
        let ca = Ca::new(dir.path(), "good").await;
        let server = ca.server().await;
        let root = ca.client("root").await;
        let controller = ca.client("citadel-controller").await;
        let alice = ca.client("alice").await;
        let bob = ca.client("bob").await;
        let stranger_ca = Ca::new(dir.path(), "stranger").await;
        let stranger_alice = stranger_ca.client("alice").await;
        let etcd = etcd_requiring_client_certs(&ca, &server).await;
        assert!(etcd.endpoint().starts_with("https://127.0.0.1:"));
        CertAuth {
            replica: None,
            etcd,
            ca,
            root,
            controller,
            alice,
            bob,
            stranger_ca,
            stranger_alice,
            keys: Keys::default(),
            dir,
        }
    }

    /// The global flags to reach etcd as the user `pair` names.
    fn as_(&self, pair: &Pair) -> Vec<String> {
        conn(&self.etcd, &self.ca.cert, Some(pair))
    }

    fn controller_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("controller.log")).unwrap_or_default()
    }

    /// (1) The roles and users, then authentication on, as root (CN=root); a second run keeps
    /// everything.
    async fn rbac_apply_as_root_adds_everything_and_then_keeps_it(&self) {
        let rbac = [
            "rbac",
            "--apply",
            "--enable-auth",
            "--add-controller",
            "citadel-controller",
            "--add-operator",
            "bob",
            "--add-user",
            "alice",
            "--add-user",
            "carol:carol-pw",
        ];
        let out = citadel(&with(self.as_(&self.root), &rbac), &[]).await;
        assert_ok(&out, "rbac --apply");
        let said = text(&out.stdout);
        for line in [
            "role citadel-user: added",
            "role citadel-user: readwrite on keys under /citadel/requests/",
            "user alice: added without a password",
            "user carol: added, with a password",
            "user root: has role root",
            "authentication: enabled",
        ] {
            assert!(said.contains(line), "missing {line:?}:\n{said}");
        }
        let out = citadel(&with(self.as_(&self.root), &rbac), &[]).await;
        assert_ok(&out, "rbac --apply, again");
        let said = text(&out.stdout);
        assert!(
            said.contains("role citadel-user: exists") && said.contains("user alice: exists"),
            "{said}"
        );
        assert!(!said.contains("added"), "{said}");
    }

    /// (2) The operator registers an engine.
    async fn the_operator_registers_an_engine(&self) {
        let out = citadel(&engine_add(self.as_(&self.bob), "e1", "2", "1024"), &[]).await;
        assert_ok(&out, "bob: engine add");
    }

    /// (3) A controller with the controller role places a user's request.
    async fn a_controller_places_what_a_user_submits(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("controller.log")).expect("log file");
        let args = with(
            self.as_(&self.controller),
            &[
                "controller",
                "--id",
                "ctl-1",
                "--lease-ttl",
                "2",
                "--nice",
                "0",
                "--listen",
                "127.0.0.1:0",
            ],
        );
        let replica = citadel_cmd(&args, &[])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the controller");
        self.replica = Some(replica);
        let request = request_file(self.dir.path());
        let out = citadel(&submit_wait(self.as_(&self.alice), &request, "r1"), &[]).await;
        assert!(
            out.status.success(),
            "alice: submit --wait: {}{}\ncontroller log:\n{}",
            text(&out.stdout),
            text(&out.stderr),
            self.controller_log()
        );
        assert!(text(&out.stdout).contains("\"status\": \"placed\""));
    }

    /// (4) The user reads the decision, here with etcdctl's variables alone.
    async fn the_user_reads_it_with_etcdctls_variables(&self) {
        let out = citadel(
            &strings(&[
                "--etcd",
                &self.etcd.endpoint(),
                "status",
                "r1",
                "-o",
                "json",
            ]),
            &[
                ("ETCDCTL_CACERT", path(&self.ca.cert)),
                ("ETCDCTL_CERT", path(&self.alice.cert)),
                ("ETCDCTL_KEY", path(&self.alice.key)),
            ],
        )
        .await;
        assert_ok(&out, "alice: status, with ETCDCTL_* variables");
        assert!(text(&out.stdout).contains("\"status\": \"placed\""));
    }

    /// (5) ... and is refused a decision, an engine and a leader key.
    async fn the_user_is_refused_decisions_engines_and_leader_keys(&self) {
        let keys = &self.keys;
        let alice_client = common::connect_with(&cert_config(&self.etcd, &self.alice)).await;
        for key in [
            keys.decision(&rid("r1")),
            keys.engine(&eid("e2")),
            format!("{}/alice", keys.leader()),
        ] {
            assert_put_denied(&alice_client, &key, "alice").await;
        }
        let out = citadel(&engine_add(self.as_(&self.alice), "e2", "2", "1024"), &[]).await;
        assert_one_line(&out, "alice: engine add", "permission denied");
    }

    /// (6) The operator cannot write a decision either.
    async fn the_operator_cannot_write_a_decision(&self) {
        let bob_client = common::connect_with(&cert_config(&self.etcd, &self.bob)).await;
        assert_put_denied(&bob_client, &self.keys.decision(&rid("r1")), "bob").await;
    }

    /// The controller ran all along; it is stopped.
    async fn the_controller_ran_all_along(&mut self) {
        let mut replica = self.replica.take().expect("the controller was started");
        assert!(
            replica.try_wait().expect("controller status").is_none(),
            "the controller exited:\n{}",
            self.controller_log()
        );
        let _ = replica.start_kill();
        let _ = timeout(Duration::from_secs(20), replica.wait()).await;
    }

    /// (7) Refusals: each one line naming its cause, and a controller that gives up.
    async fn every_refusal_is_one_line_and_a_controller_gives_up(&self) {
        let missing = Pair {
            cert: self.dir.path().join("no-such-cert.pem"),
            key: self.alice.key.clone(),
        };
        let cases: Vec<Refusal> = vec![
            (
                "a missing certificate",
                self.as_(&missing),
                &[],
                format!("--cert {}: No such file or directory", path(&missing.cert)),
            ),
            (
                "a certificate from a stranger CA",
                self.as_(&self.stranger_alice),
                &[],
                "refused the client certificate".to_string(),
            ),
            (
                "a server from a stranger CA",
                conn(&self.etcd, &self.stranger_ca.cert, Some(&self.alice)),
                &[],
                "TLS handshake with https://127.0.0.1:".to_string(),
            ),
            (
                "a wrong password",
                with(self.as_(&self.bob), &["--user", "carol"]),
                &[("CITADEL_ETCD_PASSWORD", "not-carols")],
                "etcd refused the credentials for user \"carol\"".to_string(),
            ),
            (
                "no client certificate",
                conn(&self.etcd, &self.ca.cert, None),
                &[],
                "it wants a client certificate".to_string(),
            ),
        ];
        for (what, args, env, cause) in &cases {
            let out = citadel(&with(args.clone(), &["engine", "ls"]), env).await;
            assert_one_line(&out, what, cause);
            assert_controller_gives_up(args, env, cause).await;
        }
    }

    /// A controller whose role cannot write the prefix stops too, rather than retry forever.
    async fn a_controller_without_the_controller_role_gives_up(&self) {
        assert_controller_gives_up(
            &self.as_(&self.alice),
            &[],
            "etcd refused read access to /citadel/",
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_name_users_and_roles_limit_them() {
    let mut w = CertAuth::start().await;
    w.rbac_apply_as_root_adds_everything_and_then_keeps_it()
        .await;
    w.the_operator_registers_an_engine().await;
    w.a_controller_places_what_a_user_submits().await;
    w.the_user_reads_it_with_etcdctls_variables().await;
    w.the_user_is_refused_decisions_engines_and_leader_keys()
        .await;
    w.the_operator_cannot_write_a_decision().await;
    w.the_controller_ran_all_along().await;
    w.every_refusal_is_one_line_and_a_controller_gives_up()
        .await;
    w.a_controller_without_the_controller_role_gives_up().await;
}

/// An etcd serving TLS without asking clients for a certificate, whose authentication tokens
/// expire after a second unused: users come with passwords.
/// Fields drop in order: etcd, then the files it uses.
struct Passwords {
    etcd: EtcdProcess,
    /// The global flags to reach it: only `--cacert`.
    plain: Vec<String>,
    dir: TempDir,
}

/// Root's password, in the environment.
const ROOT_PW: &[(&str, &str)] = &[("CITADEL_ETCD_PASSWORD", "root-pw")];

impl Passwords {
    async fn start() -> Passwords {
        common::init_tracing();
        let dir = TempDir::new().expect("temp dir");
        let ca = Ca::new(dir.path(), "good").await;
        let server = ca.server().await;
        // Tokens unused for a second expire: every pause below outlives them.
        let etcd = EtcdProcess::start_with(EtcdOptions {
            tls: Some(EtcdTls {
                ca: ca.cert.clone(),
                cert: server.cert.clone(),
                key: server.key.clone(),
                client_cert_auth: false,
            }),
            auth_token_ttl: Some(1),
            ..EtcdOptions::default()
        })
        .await
        .expect("start etcd with TLS");
        // Only --cacert: etcd asks for no client certificate.
        let plain = conn(&etcd, &ca.cert, None);
        Passwords { etcd, plain, dir }
    }

    fn plain(&self, more: &[&str]) -> Vec<String> {
        with(self.plain.clone(), more)
    }

    /// (1) As root with a password, before authentication is on (etcd does not check it yet:
    /// citadel connects without it), then again once it is on.
    async fn rbac_apply_as_root_with_a_password_before_and_after_auth_is_on(&self) {
        let rbac = [
            "--user",
            "root",
            "rbac",
            "--apply",
            "--enable-auth",
            "--add-controller",
            "ctl:ctl-pw",
            "--add-user",
            "u:u-pw",
        ];
        let out = citadel(&self.plain(&rbac), ROOT_PW).await;
        assert_ok(&out, "rbac --apply as root");
        assert!(
            text(&out.stdout).contains("user root: added, with a password"),
            "{}",
            text(&out.stdout)
        );
        let out = citadel(&self.plain(&rbac), ROOT_PW).await;
        assert_ok(&out, "rbac --apply as root, again");
        assert!(text(&out.stdout).contains("user root: exists"));
    }

    /// Without credentials every call is refused now.
    async fn without_credentials_every_call_is_refused(&self) {
        let out = citadel(&self.plain(&["engine", "ls"]), &[]).await;
        assert_one_line(&out, "no credentials", "etcd requires authentication");
    }

    async fn root_registers_an_engine(&self) {
        let out = citadel(
            &engine_add(self.plain(&["--user", "root"]), "e1", "4", "4096"),
            ROOT_PW,
        )
        .await;
        assert_ok(&out, "root: engine add");
    }

    /// (2) An in-process controller with a password places requests, also after its token
    /// has expired unused.
    async fn a_controller_with_a_password_places_requests_after_its_token_expired(&self) {
        let replica = Replica::start_etcd_config(
            common::client_config(&self.etcd).with_auth("ctl", "ctl-pw"),
            "ctl-1",
        );
        let request = request_file(self.dir.path());
        let user_env: &[(&str, &str)] = &[("ETCDCTL_USER", "u"), ("ETCDCTL_PASSWORD", "u-pw")];
        for (id, pause) in [("r1", false), ("r2", true), ("r3", true)] {
            if pause {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let out = citadel(&submit_wait(self.plain.clone(), &request, id), user_env).await;
            assert_ok(&out, &format!("u: submit {id} --wait"));
            assert!(text(&out.stdout).contains("\"status\": \"placed\""));
        }
        replica.stop().await;
    }

    /// (3) A wrong password: one line for a command, and an in-process controller that ends
    /// with the same error.
    async fn a_wrong_password_is_one_line_and_ends_a_controller(&self) {
        let out = citadel(&self.plain(&["--user", "u:nope", "status", "r1"]), &[]).await;
        assert_one_line(
            &out,
            "a wrong password",
            "etcd refused the credentials for user \"u\"",
        );
        let doomed = Replica::start_etcd_config(
            common::client_config(&self.etcd).with_auth("ctl", "nope"),
            "doomed",
        );
        let err = doomed
            .exited(GIVE_UP_WITHIN)
            .await
            .expect_err("a controller with a wrong password gives up");
        assert!(
            err.to_string()
                .contains("etcd refused the credentials for user \"ctl\": authentication failed"),
            "{err}"
        );
    }

    /// (4) `bench --etcd https://…` hands TLS and credentials to the controllers it starts.
    async fn bench_hands_tls_and_credentials_to_its_controllers(&self) {
        let bench = [
            "--user",
            "root",
            "bench",
            "--engines",
            "4",
            "--requests",
            "40",
            "--clients",
            "2",
            "--json",
        ];
        let out = citadel(&self.plain(&bench), ROOT_PW).await;
        assert_ok(&out, "bench over TLS with a password");
        let stdout = text(&out.stdout);
        let last = stdout.lines().last().unwrap_or_default();
        let r: serde_json::Value = serde_json::from_str(last).expect("the bench's JSON line");
        assert_eq!(r["undecided"], 0, "{last}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_over_server_only_tls_outlive_their_tokens() {
    let w = Passwords::start().await;
    w.rbac_apply_as_root_with_a_password_before_and_after_auth_is_on()
        .await;
    w.without_credentials_every_call_is_refused().await;
    w.root_registers_an_engine().await;
    w.a_controller_with_a_password_places_requests_after_its_token_expired()
        .await;
    w.a_wrong_password_is_one_line_and_ends_a_controller().await;
    w.bench_hands_tls_and_credentials_to_its_controllers().await;
}

#[tokio::test]
async fn the_printed_etcdctl_commands_create_what_apply_would() {
    let etcd = common::start_etcd().await;
    let users = ["--add-operator", "bob", "--add-user", "carol:a pass'word"];
    let out = citadel(&with(strings(&["rbac"]), &users), &[]).await;
    assert_ok(&out, "rbac");
    let mut script = text(&out.stdout);
    // And an agent's role, whose engine and health permissions are single keys.
    let out = citadel(&strings(&["rbac", "agent", "e1"]), &[]).await;
    assert_ok(&out, "rbac agent e1");
    script.push_str(&text(&out.stdout));

    // etcdctl runs every line.
    let mut sh = Command::new("sh");
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("ETCDCTL_") {
            sh.env_remove(&var);
        }
    }
    let run = sh
        .args(["-e", "-c", &script])
        .env("ETCDCTL_API", "3")
        .env("ETCDCTL_ENDPOINTS", etcd.endpoint())
        .kill_on_drop(true)
        .output();
    let ran = timeout(CMD_TIMEOUT, run)
        .await
        .expect("the script ends")
        .expect("run sh");
    assert_ok(&ran, "the printed etcdctl commands");

    // The roles hold exactly the permissions rbac means.
    let client = common::connect(&etcd).await;
    let mut auth = client.auth_client();
    let keys = Keys::default();
    let roles = Role::ALL
        .iter()
        .map(|r| (r.name().to_string(), r.grants(&keys)))
        .chain([(
            "citadel-agent-e1".to_string(),
            rbac::agent_grants(&keys, &eid("e1")),
        )]);
    for (name, grants) in roles {
        let got = auth.role_get(name.as_str()).await.expect("role get");
        let want: Vec<_> = grants.iter().map(|g| g.permission()).collect();
        let have = got.permissions();
        assert_eq!(have.len(), want.len(), "{name}: {have:?}");
        for w in &want {
            assert!(have.contains(w), "{name}: no {w:?} in {have:?}");
        }
    }
    for (user, role) in [
        ("bob", "citadel-operator"),
        ("carol", "citadel-user"),
        ("citadel-agent-e1", "citadel-agent-e1"),
    ] {
        let got = auth.user_get(user).await.expect("user get");
        assert_eq!(got.roles(), [role.to_string()], "{user}");
    }

    // --apply on top finds everything in place.
    let out = citadel(
        &with(
            strings(&["--etcd", &etcd.endpoint(), "rbac", "--apply"]),
            &users,
        ),
        &[],
    )
    .await;
    assert_ok(&out, "rbac --apply after the script");
    let said = text(&out.stdout);
    assert!(!said.contains("added"), "{said}");
    assert!(said.contains("user carol: exists, left as it is"), "{said}");
}
