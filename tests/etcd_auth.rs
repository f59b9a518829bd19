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
use citadel::rbac::Role;
use citadel::store::{EtcdConfig, TlsConfig};
use citadel_testkit::etcd::{EtcdOptions, EtcdProcess, EtcdTls};
use common::pki::{Ca, Pair, path};
use common::{CMD_TIMEOUT, Replica, citadel, citadel_cmd, eid, request_json, rid, text};
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

/// A one-shot command refused: a non-zero exit and exactly one line on stderr, which names
/// `cause` and dumps no Rust error.
fn assert_one_line(out: &Output, what: &str, cause: &str) {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "{what} should fail; it printed:\n{}{stderr}",
        text(&out.stdout)
    );
    let lines: Vec<&str> = stderr.trim().lines().collect();
    assert_eq!(lines.len(), 1, "{what}: one line expected:\n{stderr}");
    assert!(
        lines[0].starts_with("citadel: error: ") && lines[0].contains(cause),
        "{what}: expected {cause:?} in:\n{stderr}"
    );
    assert_no_dump(&stderr, what);
}

fn assert_no_dump(stderr: &str, what: &str) {
    for dump in ["tonic::", "Error(", "Status {", "Custom {"] {
        assert!(
            !stderr.contains(dump),
            "{what}: a raw error dump:\n{stderr}"
        );
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_name_users_and_roles_limit_them() {
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
    let etcd = EtcdProcess::start_with(EtcdOptions {
        tls: Some(EtcdTls {
            ca: ca.cert.clone(),
            cert: server.cert.clone(),
            key: server.key.clone(),
            client_cert_auth: true,
        }),
        ..EtcdOptions::default()
    })
    .await
    .expect("start etcd with TLS");
    assert!(etcd.endpoint().starts_with("https://127.0.0.1:"));
    let keys = Keys::default();
    let as_ = |pair: &Pair| conn(&etcd, &ca.cert, Some(pair));

    // (1) The roles and users, then authentication on, as root (CN=root); a second run
    // keeps everything.
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
    let out = citadel(&with(as_(&root), &rbac), &[]).await;
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
    let out = citadel(&with(as_(&root), &rbac), &[]).await;
    assert_ok(&out, "rbac --apply, again");
    let said = text(&out.stdout);
    assert!(
        said.contains("role citadel-user: exists") && said.contains("user alice: exists"),
        "{said}"
    );
    assert!(!said.contains("added"), "{said}");

    // (2) The operator registers an engine.
    let out = citadel(
        &with(
            as_(&bob),
            &[
                "engine",
                "add",
                "e1",
                "--addr",
                "tcp://x:2375",
                "--cpus",
                "2",
                "--memory",
                "1024",
            ],
        ),
        &[],
    )
    .await;
    assert_ok(&out, "bob: engine add");

    // (3) A controller with the controller role places a user's request.
    let log = std::fs::File::create(dir.path().join("controller.log")).expect("log file");
    let mut replica = citadel_cmd(
        &with(
            as_(&controller),
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
        ),
        &[],
    )
    .env("RUST_LOG", "info")
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .expect("start the controller");
    let request = request_file(dir.path());
    let out = citadel(
        &with(
            as_(&alice),
            &[
                "submit",
                &request,
                "--id",
                "r1",
                "--wait",
                "--timeout",
                "30",
            ],
        ),
        &[],
    )
    .await;
    let log_text =
        || std::fs::read_to_string(dir.path().join("controller.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "alice: submit --wait: {}{}\ncontroller log:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        log_text()
    );
    assert!(text(&out.stdout).contains("\"status\": \"placed\""));

    // (4) The user reads the decision, here with etcdctl's variables alone.
    let out = citadel(
        &strings(&["--etcd", &etcd.endpoint(), "status", "r1", "-o", "json"]),
        &[
            ("ETCDCTL_CACERT", path(&ca.cert)),
            ("ETCDCTL_CERT", path(&alice.cert)),
            ("ETCDCTL_KEY", path(&alice.key)),
        ],
    )
    .await;
    assert_ok(&out, "alice: status, with ETCDCTL_* variables");
    assert!(text(&out.stdout).contains("\"status\": \"placed\""));

    // (5) ... and is refused a decision, an engine and a leader key.
    let alice_client = common::connect_with(&cert_config(&etcd, &alice)).await;
    for key in [
        keys.decision(&rid("r1")),
        keys.engine(&eid("e2")),
        format!("{}/alice", keys.leader()),
    ] {
        assert_put_denied(&alice_client, &key, "alice").await;
    }
    let out = citadel(
        &with(
            as_(&alice),
            &[
                "engine",
                "add",
                "e2",
                "--addr",
                "tcp://x:2375",
                "--cpus",
                "2",
                "--memory",
                "1024",
            ],
        ),
        &[],
    )
    .await;
    assert_one_line(&out, "alice: engine add", "permission denied");

    // (6) The operator cannot write a decision either.
    let bob_client = common::connect_with(&cert_config(&etcd, &bob)).await;
    assert_put_denied(&bob_client, &keys.decision(&rid("r1")), "bob").await;

    // The controller ran all along.
    assert!(
        replica.try_wait().expect("controller status").is_none(),
        "the controller exited:\n{}",
        log_text()
    );
    let _ = replica.start_kill();
    let _ = timeout(Duration::from_secs(20), replica.wait()).await;

    // (7) Refusals: each one line naming its cause, and a controller that gives up.
    let missing = Pair {
        cert: dir.path().join("no-such-cert.pem"),
        key: alice.key.clone(),
    };
    let cases: Vec<Refusal> = vec![
        (
            "a missing certificate",
            as_(&missing),
            &[],
            format!("--cert {}: No such file or directory", path(&missing.cert)),
        ),
        (
            "a certificate from a stranger CA",
            as_(&stranger_alice),
            &[],
            "refused the client certificate".to_string(),
        ),
        (
            "a server from a stranger CA",
            conn(&etcd, &stranger_ca.cert, Some(&alice)),
            &[],
            "TLS handshake with https://127.0.0.1:".to_string(),
        ),
        (
            "a wrong password",
            with(as_(&bob), &["--user", "carol"]),
            &[("CITADEL_ETCD_PASSWORD", "not-carols")],
            "etcd refused the credentials for user \"carol\"".to_string(),
        ),
        (
            "no client certificate",
            conn(&etcd, &ca.cert, None),
            &[],
            "it wants a client certificate".to_string(),
        ),
    ];
    for (what, args, env, cause) in &cases {
        let out = citadel(&with(args.clone(), &["engine", "ls"]), env).await;
        assert_one_line(&out, what, cause);
        assert_controller_gives_up(args, env, cause).await;
    }
    // A controller whose role cannot write the prefix stops too, rather than retry forever.
    assert_controller_gives_up(&as_(&alice), &[], "etcd refused read access to /citadel/").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_over_server_only_tls_outlive_their_tokens() {
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
    let root_pw: &[(&str, &str)] = &[("CITADEL_ETCD_PASSWORD", "root-pw")];

    // (1) As root with a password, before authentication is on (etcd does not check it
    // yet: citadel connects without it), then again once it is on.
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
    let out = citadel(&with(plain.clone(), &rbac), root_pw).await;
    assert_ok(&out, "rbac --apply as root");
    assert!(
        text(&out.stdout).contains("user root: added, with a password"),
        "{}",
        text(&out.stdout)
    );
    let out = citadel(&with(plain.clone(), &rbac), root_pw).await;
    assert_ok(&out, "rbac --apply as root, again");
    assert!(text(&out.stdout).contains("user root: exists"));

    // Without credentials every call is refused now.
    let out = citadel(&with(plain.clone(), &["engine", "ls"]), &[]).await;
    assert_one_line(&out, "no credentials", "etcd requires authentication");

    let out = citadel(
        &with(
            plain.clone(),
            &[
                "--user",
                "root",
                "engine",
                "add",
                "e1",
                "--addr",
                "tcp://x:2375",
                "--cpus",
                "4",
                "--memory",
                "4096",
            ],
        ),
        root_pw,
    )
    .await;
    assert_ok(&out, "root: engine add");

    // (2) An in-process controller with a password places requests, also after its token
    // has expired unused.
    let replica = Replica::start_etcd_config(
        common::client_config(&etcd).with_auth("ctl", "ctl-pw"),
        "ctl-1",
    );
    let request = request_file(dir.path());
    let user_env: &[(&str, &str)] = &[("ETCDCTL_USER", "u"), ("ETCDCTL_PASSWORD", "u-pw")];
    for (id, pause) in [("r1", false), ("r2", true), ("r3", true)] {
        if pause {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let out = citadel(
            &with(
                plain.clone(),
                &["submit", &request, "--id", id, "--wait", "--timeout", "30"],
            ),
            user_env,
        )
        .await;
        assert_ok(&out, &format!("u: submit {id} --wait"));
        assert!(text(&out.stdout).contains("\"status\": \"placed\""));
    }
    replica.stop().await;

    // (3) A wrong password: one line for a command, and an in-process controller that ends
    // with the same error.
    let out = citadel(
        &with(plain.clone(), &["--user", "u:nope", "status", "r1"]),
        &[],
    )
    .await;
    assert_one_line(
        &out,
        "a wrong password",
        "etcd refused the credentials for user \"u\"",
    );
    let doomed = Replica::start_etcd_config(
        common::client_config(&etcd).with_auth("ctl", "nope"),
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

    // (4) `bench --etcd https://…` hands TLS and credentials to the controllers it starts.
    let out = citadel(
        &with(
            plain.clone(),
            &[
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
            ],
        ),
        root_pw,
    )
    .await;
    assert_ok(&out, "bench over TLS with a password");
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let r: serde_json::Value = serde_json::from_str(last).expect("the bench's JSON line");
    assert_eq!(r["undecided"], 0, "{last}");
}

#[tokio::test]
async fn the_printed_etcdctl_commands_create_what_apply_would() {
    let etcd = common::start_etcd().await;
    let users = ["--add-operator", "bob", "--add-user", "carol:a pass'word"];
    let out = citadel(&with(strings(&["rbac"]), &users), &[]).await;
    assert_ok(&out, "rbac");
    let script = text(&out.stdout);

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
    for role in Role::ALL {
        let got = auth.role_get(role.name()).await.expect("role get");
        let want: Vec<_> = role
            .grants(&keys)
            .iter()
            .map(|g| g.access.permission(&g.prefix))
            .collect();
        let have = got.permissions();
        assert_eq!(have.len(), want.len(), "{}: {have:?}", role.name());
        for w in &want {
            assert!(have.contains(w), "{}: no {w:?} in {have:?}", role.name());
        }
    }
    for (user, role) in [("bob", "citadel-operator"), ("carol", "citadel-user")] {
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
