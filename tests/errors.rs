//! Errors that name the real cause, on real etcd and the real binary: an `https://` endpoint on
//! a plain etcd told apart from a TLS etcd that wants a client certificate, an endpoint with a
//! scheme etcd does not speak refused before any connection, an engine that refuses the
//! connection named as such by every caller (`engine add`, the agent, `controller --docker`),
//! and a controller's log when etcd dies under it: one readable cause, no Debug dump.
//!
//! Certificates are made by `openssl` in the test's temporary directory (`common::pki`).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use citadel_testkit::child::Signal;
use common::pki::{Ca, etcd_requiring_client_certs, path};
use common::*;
use tempfile::TempDir;
use tokio::time::{Instant, timeout};

/// A loopback port nothing listens on: bound, then released.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("its address")
}

/// `https://` given for an etcd that serves plain http is said as such; a TLS etcd that wants
/// a client certificate (`--client-cert-auth`) and gets none is said as that, and never as
/// plain http. Before, both said "it wants a client certificate".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_plain_etcd_is_told_apart_from_a_tls_etcd_wanting_a_certificate() {
    let plain = start_etcd().await;
    let https = plain.endpoint().replace("http://", "https://");
    let out = citadel(&["--etcd", &https, "engine", "ls"], &[]).await;
    let line = assert_one_line(&out, "https on plain etcd", "speaks plain http");
    assert!(
        line.contains(&format!("etcd at {https} speaks plain http: drop https://")),
        "{line}"
    );
    assert!(!line.contains("client certificate"), "{line}");

    let dir = TempDir::new().expect("temp dir");
    let ca = Ca::new(dir.path(), "errs").await;
    let server = ca.server().await;
    let tls = etcd_requiring_client_certs(&ca, &server).await;
    // etcd's refusal reaches the client as an alert or as a closed connection, depending on
    // timing: a few tries see both.
    for _ in 0..3 {
        let out = citadel(
            &[
                "--etcd",
                &tls.endpoint(),
                "--cacert",
                path(&ca.cert),
                "engine",
                "ls",
            ],
            &[],
        )
        .await;
        let line = assert_one_line(&out, "no certificate", "wants a client certificate");
        assert!(!line.contains("plain http"), "{line}");
    }
}

/// A scheme other than http or https, or an endpoint without a host or port, is one line that
/// names it, before any connection: nothing reaches the port named. Before, `htp://` failed as
/// "dns error: failed to lookup address information".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_scheme_or_a_missing_port_is_refused_before_any_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let cases = [
        (format!("htp://127.0.0.1:{port}"), "unknown scheme \"htp\""),
        (
            format!("unix://127.0.0.1:{port}"),
            "unknown scheme \"unix\"",
        ),
        ("http://127.0.0.1".to_string(), "no port"),
        (format!("http://:{port}"), "no host"),
    ];
    for (endpoint, cause) in cases {
        let out = citadel(&["--etcd", &endpoint, "engine", "ls"], &[]).await;
        let line = assert_one_line(&out, &endpoint, cause);
        assert!(line.contains(&format!("--etcd {endpoint}: ")), "{line}");
        assert!(!line.contains("dns"), "{line}");
    }
    // Every command has exited: a connection it made would be waiting to be accepted.
    let accepted = timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "a command connected: {accepted:?}");
}

/// An engine whose port refuses connections is "connection refused", with what to check, for
/// every caller: `engine add`'s probe, the agent, and a `controller --docker` leader's health
/// check in its log. Before, all said "Error in the hyper legacy client: client error
/// (Connect)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_refuses_the_connection_is_named_so_by_every_caller() {
    let etcd = start_etcd().await;
    let endpoint = etcd.endpoint();
    let addr = format!("tcp://{}", closed_port());
    let want = format!(
        "cannot reach the engine at {addr}: connection refused: is dockerd listening on that \
         address and port?"
    );

    let out = citadel(
        &["--etcd", &endpoint, "engine", "add", "e1", "--addr", &addr],
        &[],
    )
    .await;
    let line = assert_one_line(&out, "engine add", "connection refused");
    assert!(line.contains(&want), "{line}");

    let out = citadel(
        &[
            "--etcd", &endpoint, "agent", "--engine", "e1", "--docker", &addr,
        ],
        &[("RUST_LOG", "warn")],
    )
    .await;
    assert!(!out.status.success(), "the agent ran without its engine");
    let stderr = text(&out.stderr);
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(last.contains(&want), "agent:\n{stderr}");
    assert_no_dump(&stderr, "agent");

    // Registered without a probe; a leader allowed to dial it checks its health.
    let out = citadel(
        &[
            "--etcd", &endpoint, "engine", "add", "e1", "--addr", &addr, "--cpus", "2", "--memory",
            "1024",
        ],
        &[],
    )
    .await;
    assert!(out.status.success(), "engine add: {}", text(&out.stderr));
    let dir = TempDir::new().expect("temp dir");
    let replica = ReplicaProcess::start(
        &endpoint,
        "r1",
        dir.path(),
        &["--docker", "--docker-allow", &addr, "--health-every", "0.5"],
    );
    let deadline = Instant::now() + WAIT;
    let line = loop {
        let log = replica.log();
        if let Some(line) = log.lines().find(|l| l.contains("engine does not answer")) {
            break line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no health check failed within {WAIT:?}:\n{log}"
        );
        tokio::time::sleep(POLL).await;
    };
    assert!(line.contains("connection refused"), "{line}");
    assert!(line.contains("is dockerd listening"), "{line}");
    assert_no_dump(&replica.log(), "controller --docker");
}

/// A leader whose etcd dies logs why each call failed in one readable phrase ("connection
/// refused"), never tonic's Debug structs. Before, "cannot grant a lease" and "could not revoke
/// lease" logged `source: tonic::transport::Error(Transport, ConnectError(…`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_logs_a_readable_cause_when_etcd_dies_under_it() {
    let mut etcd = start_etcd().await;
    let client = connect(&etcd).await;
    let dir = TempDir::new().expect("temp dir");
    let replica = ReplicaProcess::start(&etcd.endpoint(), "r1", dir.path(), &["--lease-ttl", "2"]);
    wait_leader(&client, &keys(), WAIT).await;
    drop(client);
    etcd.kill().await;
    // The lease is lost after twice its TTL without etcd; the replica then tries to grant
    // another, and fails.
    let deadline = Instant::now() + WAIT;
    let log = loop {
        let log = replica.log();
        if log.contains("cannot grant a lease") {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "no lease grant failed within {WAIT:?}:\n{log}"
        );
        tokio::time::sleep(POLL).await;
    };
    let grant = log
        .lines()
        .find(|l| l.contains("cannot grant a lease"))
        .unwrap_or_default();
    assert!(grant.contains("connection refused"), "{grant}");
    assert_no_dump(&log, "controller log");
    replica.signal(Signal::TERM);
}
