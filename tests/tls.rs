//! citadel against a Docker engine over TLS (`https://`, client certificates): the CLI's
//! `engine add` probe and `citadel::docker` launching and removing a container.
//!
//! The engine is an extra dockerd (`citadel_testkit::dockerd`) serving its API with
//! `--tlsverify` on a 127.0.0.1 port of the machine's network namespace, with a throwaway CA,
//! server and client certificates made by `openssl` in the test's temporary directory. Every
//! daemon, etcd, container and file is cleaned up by drop guards, passed or failed.
//!
//! Needs root, `openssl`, and the system daemon (the test image is copied from it).

#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use citadel::docker::engine::{self, TlsFiles};
use citadel::docker::{self, LaunchSpec, State};
use citadel::model::Image;
use citadel_testkit::dockerd::{DockerdOptions, DockerdProcess, DockerdTls};
use citadel_testkit::etcd::EtcdProcess;
use tempfile::TempDir;
use tokio::process::Command;
use tokio::time::timeout;

const BIN: &str = env!("CARGO_BIN_EXE_citadel");
/// Bound on one external command (openssl, docker CLI, citadel).
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `program ARGS…` in `dir`, bounded; the command must succeed.
async fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    let output = run_output(dir, program, args).await;
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs `program ARGS…` in `dir`, bounded; whatever its exit status.
async fn run_output(dir: &Path, program: &str, args: &[&str]) -> Output {
    let run = Command::new(program)
        .args(args)
        .current_dir(dir)
        .kill_on_drop(true)
        .output();
    timeout(CMD_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} took over {CMD_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// A throwaway CA with a server certificate for 127.0.0.1 and a client certificate.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client: TlsFiles,
}

impl Pki {
    /// Makes the CA `name` and its two certificates in `dir` (files prefixed with `name`).
    async fn generate(dir: &Path, name: &str) -> Pki {
        let f = |suffix: &str| format!("{name}-{suffix}");
        let days = "2";
        run(
            dir,
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                days,
                "-subj",
                &format!("/CN={name} test CA"),
                "-keyout",
                &f("ca-key.pem"),
                "-out",
                &f("ca.pem"),
            ],
        )
        .await;
        for (who, cn, ext) in [
            (
                "server",
                "127.0.0.1",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "citadel", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(dir.join(f(&format!("{who}.ext"))), ext).expect("write ext file");
            run(
                dir,
                "openssl",
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    &format!("/CN={cn}"),
                    "-keyout",
                    &f(&format!("{who}-key.pem")),
                    "-out",
                    &f(&format!("{who}.csr")),
                ],
            )
            .await;
            run(
                dir,
                "openssl",
                &[
                    "x509",
                    "-req",
                    "-days",
                    days,
                    "-in",
                    &f(&format!("{who}.csr")),
                    "-CA",
                    &f("ca.pem"),
                    "-CAkey",
                    &f("ca-key.pem"),
                    "-CAcreateserial",
                    "-extfile",
                    &f(&format!("{who}.ext")),
                    "-out",
                    &f(&format!("{who}.pem")),
                ],
            )
            .await;
        }
        let path = |suffix: &str| dir.join(f(suffix));
        Pki {
            ca: path("ca.pem"),
            server_cert: path("server.pem"),
            server_key: path("server-key.pem"),
            client: TlsFiles {
                ca: path("ca.pem"),
                cert: path("client.pem"),
                key: path("client-key.pem"),
            },
        }
    }
}

/// A dockerd serving TLS with `pki`'s server certificate, requiring its client certificates.
async fn tls_dockerd(name: &str, pki: &Pki) -> DockerdProcess {
    let opts = DockerdOptions {
        tls: Some(DockerdTls {
            ca: pki.ca.clone(),
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
        }),
        ..DockerdOptions::default()
    };
    DockerdProcess::start_with(name, opts)
        .await
        .unwrap_or_else(|e| panic!("start dockerd {name}: {e}"))
}

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// `citadel --etcd ENDPOINT engine add ID --addr ADDR [TLS flags]`.
async fn engine_add(endpoint: &str, id: &str, addr: &str, tls: Option<&TlsFiles>) -> Output {
    let mut args = vec!["--etcd", endpoint, "engine", "add", id, "--addr", addr];
    if let Some(t) = tls {
        args.extend([
            "--tls-ca",
            s(&t.ca),
            "--tls-cert",
            s(&t.cert),
            "--tls-key",
            s(&t.key),
        ]);
    }
    run_output(Path::new("/"), BIN, &args).await
}

/// The engine registered under `id`, as JSON; `None` if there is none.
async fn registered(endpoint: &str, id: &str) -> Option<serde_json::Value> {
    let ask = async {
        let mut client = etcd_client::Client::connect([endpoint], None).await?;
        client.get(format!("/citadel/engines/{id}"), None).await
    };
    let got = timeout(Duration::from_secs(10), ask)
        .await
        .expect("etcd get within 10 s")
        .expect("etcd get");
    got.kvs()
        .first()
        .map(|kv| serde_json::from_slice(kv.value()).expect("engine JSON"))
}

#[tokio::test]
async fn engine_add_over_tls_reads_the_engine_and_needs_the_tls_files() {
    let dir = TempDir::new().expect("temp dir");
    let pki = Pki::generate(dir.path(), "good").await;
    let dockerd = tls_dockerd("tls-add", &pki).await;
    let addr = dockerd.tls_addr().expect("a TLS address");
    assert!(addr.starts_with("https://127.0.0.1:"), "{addr}");
    let etcd = EtcdProcess::start().await.expect("start etcd");
    let ep = etcd.endpoint();

    // (1) With the client certificate: registered with what the engine reports, which is
    // this machine's (the system daemon runs on the same one).
    let out = engine_add(&ep, "tls1", &addr, Some(&pki.client)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "engine add over TLS: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let system = run(
        Path::new("/"),
        "docker",
        &["info", "--format", "{{.NCPU}} {{.MemTotal}}"],
    )
    .await;
    let system = String::from_utf8_lossy(&system.stdout);
    let (ncpu, mem_total) = system
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("docker info: {system:?}"));
    let ncpu: f64 = ncpu.parse().expect("NCPU");
    let mem_mb = (mem_total.parse::<u64>().expect("MemTotal") / (1024 * 1024)) as f64;
    let engine = registered(&ep, "tls1").await.expect("tls1 registered");
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
    assert!(registered(&ep, "tls2").await.is_none());

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
    assert!(registered(&ep, "tls3").await.is_none());
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
    let on_engine = run(
        Path::new("/"),
        "docker",
        &["-H", &dockerd.addr(), "ps", "-q", "--no-trunc"],
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&on_engine.stdout).trim(),
        running.id
    );
    let on_system = run_output(Path::new("/"), "docker", &["inspect", &running.id]).await;
    assert!(
        !on_system.status.success(),
        "the container is on the system daemon"
    );

    let removed = timeout(
        Duration::from_secs(60),
        docker::stop_and_remove(&docker, &request, Duration::from_secs(1)),
    )
    .await
    .expect("stop_and_remove within 60 s")
    .expect("stop_and_remove over TLS");
    assert!(removed);
    let left = run(
        Path::new("/"),
        "docker",
        &["-H", &dockerd.addr(), "ps", "-aq"],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "");
}
