//! citadel against a Docker engine over TLS (`https://`, client certificates): the CLI's
//! `engine add` probe and `citadel::docker` launching and removing a container.
//!
//! The engine is an extra dockerd (`citadel_testkit::dockerd`) serving its API with
//! `--tlsverify` on a 127.0.0.1 port of the machine's network namespace, with a throwaway CA,
//! server and client certificates made by `openssl` in the test's temporary directory
//! (`common::pki`). Every
//! daemon, etcd, container and file is cleaned up by drop guards, passed or failed.
//!
//! Needs root, `openssl`, and the system daemon (the test image is copied from it).

#![cfg(target_os = "linux")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use citadel::docker::engine::{self, TlsFiles};
use citadel::docker::{self, LaunchSpec, State};
use citadel::model::Image;
use citadel_testkit::dockerd::{DockerdOptions, DockerdProcess, DockerdTls};
use common::pki::{Ca, Pair, path};
use etcd_client::Client;
use tempfile::TempDir;
use tokio::time::timeout;

/// A throwaway CA (`common::pki`) with a server certificate for 127.0.0.1 and a client
/// certificate.
struct Pki {
    ca: PathBuf,
    server: Pair,
    client: TlsFiles,
}

impl Pki {
    /// Makes the CA `name` and its two certificates in `dir` (files prefixed with `name`).
    async fn generate(dir: &Path, name: &str) -> Pki {
        let ca = Ca::new(dir, name).await;
        let server = ca.server().await;
        let client = ca.client("citadel").await;
        Pki {
            ca: ca.cert.clone(),
            server,
            client: TlsFiles {
                ca: ca.cert.clone(),
                cert: client.cert,
                key: client.key,
            },
        }
    }
}

/// A dockerd serving TLS with `pki`'s server certificate, requiring its client certificates.
async fn tls_dockerd(name: &str, pki: &Pki) -> DockerdProcess {
    let opts = DockerdOptions {
        tls: Some(DockerdTls {
            ca: pki.ca.clone(),
            cert: pki.server.cert.clone(),
            key: pki.server.key.clone(),
        }),
        ..DockerdOptions::default()
    };
    DockerdProcess::start_with(name, opts)
        .await
        .unwrap_or_else(|e| panic!("start dockerd {name}: {e}"))
}

/// `citadel --etcd ENDPOINT engine add ID --addr ADDR [TLS flags]`.
async fn engine_add(endpoint: &str, id: &str, addr: &str, tls: Option<&TlsFiles>) -> Output {
    let mut args = vec!["--etcd", endpoint, "engine", "add", id, "--addr", addr];
    if let Some(t) = tls {
        args.extend([
            "--tls-ca",
            path(&t.ca),
            "--tls-cert",
            path(&t.cert),
            "--tls-key",
            path(&t.key),
        ]);
    }
    common::citadel(&args, &[]).await
}

/// The engine registered under `id`, as JSON; `None` if there is none.
async fn registered(client: &Client, id: &str) -> Option<serde_json::Value> {
    common::get_json(client, &format!("/citadel/engines/{id}")).await
}

#[tokio::test]
async fn engine_add_over_tls_reads_the_engine_and_needs_the_tls_files() {
    let dir = TempDir::new().expect("temp dir");
    let pki = Pki::generate(dir.path(), "good").await;
    let dockerd = tls_dockerd("tls-add", &pki).await;
    let addr = dockerd.tls_addr().expect("a TLS address");
    assert!(addr.starts_with("https://127.0.0.1:"), "{addr}");
    let etcd = common::start_etcd().await;
    let ep = etcd.endpoint();
    let client = common::connect(&etcd).await;

    // (1) With the client certificate: registered with what the engine reports, which is
    // this machine's (the system daemon runs on the same one).
    let out = engine_add(&ep, "tls1", &addr, Some(&pki.client)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "engine add over TLS: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ncpu, mem_mb) = common::docker_info();
    let engine = registered(&client, "tls1").await.expect("tls1 registered");
    assert_eq!(engine["addr"], addr.as_str(), "{engine}");
    assert_eq!(engine["cpus"].as_f64(), Some(ncpu), "{engine}");
    assert_eq!(engine["memory"].as_f64(), Some(mem_mb), "{engine}");
    assert!(
        stdout.contains(&format!("engine tls1 registered: {ncpu} cpus, {mem_mb} MB")),
        "{stdout}"
    );

    // (2) Without the TLS files: one clear line, nothing registered.
    let out = engine_add(&ep, "tls2", &addr, None).await;
    assert!(!out.status.success(), "https without TLS files succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("without TLS files: {}", stderr.trim());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("https needs --tls-ca, --tls-cert and --tls-key"),
        "{stderr}"
    );
    assert!(registered(&client, "tls2").await.is_none());

    // A client certificate from another CA is refused by the engine (--tlsverify).
    let other = Pki::generate(dir.path(), "other").await;
    let stranger = TlsFiles {
        ca: pki.ca.clone(),
        cert: other.client.cert.clone(),
        key: other.client.key.clone(),
    };
    let out = engine_add(&ep, "tls3", &addr, Some(&stranger)).await;
    eprintln!(
        "foreign client certificate: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert!(
        !out.status.success(),
        "a foreign client certificate was accepted: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(registered(&client, "tls3").await.is_none());
}

#[tokio::test]
async fn launch_and_remove_over_tls() {
    let image = citadel_testkit::dockerd::test_image().unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new().expect("temp dir");
    let pki = Pki::generate(dir.path(), "launch").await;
    let dockerd = tls_dockerd("tls-launch", &pki).await;
    dockerd
        .load_image(&image)
        .await
        .expect("load the test image");
    let addr = dockerd.tls_addr().expect("a TLS address");

    let docker = engine::connect(&addr, Some(&pki.client), Duration::from_secs(30))
        .expect("connect over TLS");
    let request = format!("tls-{}", uuid::Uuid::new_v4());
    let spec = LaunchSpec::from_image(
        &request,
        "tls1",
        &Image {
            name: image.clone(),
            entrypoint: vec!["sleep".into()],
            args: vec!["300".into()],
            kind: "service".into(),
            network_mode: "none".into(),
            ..Image::default()
        },
        100,
        32,
    );
    let running = timeout(Duration::from_secs(60), docker::launch(&docker, &spec))
        .await
        .expect("launch within 60 s")
        .unwrap_or_else(|e| panic!("launch over TLS: {e}"));
    assert_eq!(running.state, State::Running, "{running:?}");
    assert_eq!(running.request_id, request);

    // It runs on the TLS engine (seen through its unix socket), not on the system one.
    let on_engine = common::docker(Some(&dockerd.addr()), &["ps", "-q", "--no-trunc"]).await;
    assert_eq!(on_engine, running.id);
    let on_system = common::docker_output(None, &["inspect", &running.id]).await;
    assert!(
        !on_system.status.success(),
        "the container is on the system daemon"
    );

    let removed = timeout(
        Duration::from_secs(60),
        docker::stop_and_remove(&docker, &spec.owner(), &request, Duration::from_secs(1)),
    )
    .await
    .expect("stop_and_remove within 60 s")
    .expect("stop_and_remove over TLS");
    assert!(removed);
    let left = common::docker(Some(&dockerd.addr()), &["ps", "-aq"]).await;
    assert_eq!(left, "");
}
