//! The leader's own Docker mode (`controller --docker`) trusts nothing an engine record says:
//! whoever may write `engines/` cannot make the leader dial an address its flags do not allow
//! (`--docker-allow`), read a TLS file outside `--docker-tls-dir`, or stop a container that is
//! labelled for another engine or another cluster.
//!
//! The real `citadel` binary as the controller, a real etcd and this machine's Docker engine
//! (`unix:///var/run/docker.sock`, which a controller given no `--docker-allow` may dial): its
//! health key, rewritten every round, is how a test knows rounds have passed. Nothing here
//! asserts a duration: each wait is for an event, bounded.
//!
//! Needs root and the system daemon (the test image is built on it by scripts/test-image.sh).

#![cfg(target_os = "linux")]

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use citadel::keys::Keys;
use citadel::model::Status;
use etcd_client::Client;
use serde_json::json;
use tempfile::TempDir;

mod common;
use common::ReplicaProcess;

/// The system daemon, the one address a controller without `--docker-allow` may dial.
const LOCAL: &str = "unix:///var/run/docker.sock";
/// The longest any single wait here may take.
const WAIT: Duration = Duration::from_secs(30);
/// Health rounds watched after the leader first wrote the local engine's health: the refused
/// engines had as many chances to be dialed.
const ROUNDS: usize = 4;

/// One test's etcd, controller and log directory.
struct World {
    controller: Option<ReplicaProcess>,
    client: Client,
    keys: Keys,
    _etcd: citadel_testkit::etcd::EtcdProcess,
    dir: TempDir,
}

impl World {
    async fn start() -> World {
        let etcd = common::start_etcd().await;
        let client = common::connect(&etcd).await;
        World {
            controller: None,
            client,
            keys: common::keys(),
            _etcd: etcd,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The controller, with fast health rounds and `extra` flags; waits until it leads.
    async fn start_controller(&mut self, extra: &[&str]) {
        let mut args = vec![
            "--docker",
            "--health-every",
            "0.3",
            "--health-ttl",
            "2",
            "--lease-ttl",
            "2",
        ];
        args.extend_from_slice(extra);
        let endpoint = self._etcd.endpoint();
        self.controller = Some(ReplicaProcess::start(
            &endpoint,
            "ctl-1",
            self.dir.path(),
            &args,
        ));
        let deadline = std::time::Instant::now() + WAIT;
        while common::leader_id(&self.client, &self.keys).await.is_none() {
            if std::time::Instant::now() >= deadline {
                let c = self.controller.as_mut().expect("started");
                let pid = c.child.id();
                let status = c.child.try_wait();
                let wchan =
                    std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
                let state =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                panic!(
                    "no leader within {WAIT:?}; exit {status:?}, wchan {wchan}, {}; the controller's log:\n{}",
                    state.lines().find(|l| l.starts_with("State")).unwrap_or(""),
                    self.log()
                );
            }
            tokio::time::sleep(common::POLL).await;
        }
    }

    fn log(&self) -> String {
        self.controller
            .as_ref()
            .map(|c| c.log())
            .unwrap_or_default()
    }

    /// Writes `engines/<id>` as an operator would, with an explicit offer (nothing probes).
    async fn put_engine(&self, id: &str, record: serde_json::Value) {
        let mut record = record;
        record["cpus"] = json!(2);
        record["memory"] = json!(2048);
        common::put_engine_json(&self.client, &self.keys, id, &record).await;
    }

    async fn health_revision(&self, id: &str) -> Option<i64> {
        common::get(&self.client, &self.keys.health(&common::eid(id)))
            .await
            .map(|g| g.mod_revision)
    }

    /// Waits until the leader has rewritten `id`'s health key `n` more times: `n` health rounds
    /// at least have passed. `check` runs at every look, to fail as soon as what it guards
    /// happens (a leader stuck opening a FIFO would write no more health).
    async fn rounds(&self, id: &str, n: usize, check: impl Fn()) {
        let mut last = None;
        for i in 0..=n {
            let seen = last;
            common::wait_until(
                &format!("health round {i} of engine {id}"),
                WAIT,
                || async {
                    check();
                    let now = self.health_revision(id).await;
                    now.is_some() && now != seen
                },
            )
            .await;
            last = self.health_revision(id).await;
        }
    }

    /// The controller's log lines about `engine` that say it was not contacted.
    fn refusals(&self, engine: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("engine not contacted") && l.contains(&format!("engine={engine}"))
            })
            .map(str::to_string)
            .collect()
    }
}

/// A unix socket the test listens on, counting every connection made to it.
fn listen_unix(path: &Path) -> Arc<AtomicUsize> {
    let listener = tokio::net::UnixListener::bind(path).expect("bind a unix socket");
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    count
}

/// A TCP port on loopback the test listens on, counting every connection made to it.
async fn listen_tcp() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a port");
    let addr = format!("tcp://{}", listener.local_addr().expect("its address"));
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_at_an_address_not_allowed_is_never_dialed() {
    let mut w = World::start().await;
    let socket = w.dir.path().join("docker.sock");
    let on_socket = listen_unix(&socket);
    let (port, on_port) = listen_tcp().await;
    w.put_engine("local", json!({"addr": LOCAL})).await;
    let trap = format!("unix://{}", socket.display());
    w.put_engine("trap", json!({"addr": trap})).await;
    // No --docker-allow: only the local default socket.
    w.start_controller(&[]).await;

    let nothing_dialed = || {
        assert_eq!(on_socket.load(Ordering::SeqCst), 0, "the socket was dialed");
        assert_eq!(on_port.load(Ordering::SeqCst), 0, "the port was dialed");
    };
    w.rounds("local", ROUNDS, nothing_dialed).await;
    assert!(
        w.health_revision("trap").await.is_none(),
        "trap has a health key"
    );
    let refusals = w.refusals("trap");
    assert_eq!(refusals.len(), 1, "logged once: {refusals:?}");
    assert!(refusals[0].contains("is not allowed"), "{}", refusals[0]);
    assert!(refusals[0].contains(&trap), "{}", refusals[0]);

    // Not schedulable: a request pinned to it is refused as unhealthy, never placed there.
    let request = common::request_json(
        0.5,
        64,
        json!({"image": "busybox", "labels": ["engine==trap"]}),
    );
    common::put_request(&w.client, &w.keys, "pinned", request).await;
    let d = common::wait_decision(&w.client, &w.keys, "pinned", WAIT).await;
    assert_eq!(d.status, Status::Unschedulable, "{d:?}");
    assert!(d.reason.contains("1 unhealthy"), "{}", d.reason);

    // Pointed at a TCP port instead: a new reason, logged once more, and still nothing dialed.
    w.put_engine("trap", json!({"addr": port})).await;
    common::wait_until("the new refusal is logged", WAIT, || async {
        w.refusals("trap").len() == 2
    })
    .await;
    w.rounds("local", ROUNDS, nothing_dialed).await;
    let refusals = w.refusals("trap");
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert!(refusals[1].contains(&port), "{}", refusals[1]);
    assert!(w.health_revision("trap").await.is_none());
}

/// Makes a FIFO. Opening one for reading blocks until a writer comes: a leader that opened it
/// would still be in that open when the test looks.
fn mkfifo(path: &Path) {
    let out = std::process::Command::new("mkfifo")
        .arg(path)
        .output()
        .expect("mkfifo");
    assert!(out.status.success(), "mkfifo {}: {out:?}", path.display());
}

/// Whether some process has `fifo` open for reading, or is blocked opening it so: a writer's
/// non-blocking open succeeds only then (ENXIO otherwise), and is closed again at once.
fn has_reader(fifo: &Path) -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(fifo)
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_files_outside_the_allowed_directory_are_never_opened() {
    let mut w = World::start().await;
    let allowed = w.dir.path().join("tls");
    let outside = w.dir.path().join("outside");
    std::fs::create_dir(&allowed).unwrap();
    std::fs::create_dir(&outside).unwrap();
    let mut fifos = Vec::new();
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        let fifo = outside.join(f);
        mkfifo(&fifo);
        fifos.push(fifo);
    }
    // Inside the directory by name, outside once followed: a link to the outside FIFO.
    let link = allowed.join("key.pem");
    std::os::unix::fs::symlink(&fifos[2], &link).unwrap();
    for f in ["ca.pem", "cert.pem"] {
        std::fs::write(allowed.join(f), "not a certificate").unwrap();
    }
    let (addr, dialed) = listen_tcp().await;
    let path = |p: &Path| p.display().to_string();
    w.put_engine("local", json!({"addr": LOCAL})).await;
    w.put_engine(
        "outside",
        json!({"addr": addr, "tls_ca": path(&fifos[0]), "tls_cert": path(&fifos[1]), "tls_key": path(&fifos[2])}),
    )
    .await;
    w.put_engine(
        "linked",
        json!({
            "addr": addr,
            "tls_ca": path(&allowed.join("ca.pem")),
            "tls_cert": path(&allowed.join("cert.pem")),
            "tls_key": path(&link),
        }),
    )
    .await;
    let dir = path(&allowed);
    w.start_controller(&[
        "--docker-allow",
        LOCAL,
        "--docker-allow",
        &addr,
        "--docker-tls-dir",
        &dir,
    ])
    .await;

    let nothing_opened = || {
        for fifo in &fifos {
            assert!(!has_reader(fifo), "{} was opened", fifo.display());
        }
        assert_eq!(dialed.load(Ordering::SeqCst), 0, "an engine was dialed");
    };
    w.rounds("local", ROUNDS, nothing_opened).await;
    for engine in ["outside", "linked"] {
        let refusals = w.refusals(engine);
        assert_eq!(refusals.len(), 1, "{engine}: {refusals:?}");
        assert!(refusals[0].contains("is not inside"), "{}", refusals[0]);
        assert!(
            w.health_revision(engine).await.is_none(),
            "{engine} has a health key"
        );
    }
    assert!(w.refusals("outside")[0].contains(&path(&fifos[0])));
    assert!(w.refusals("linked")[0].contains(&path(&link)));
}

/// Every container labelled with `request`, as the docker CLI lists them.
async fn containers_of(request: &str) -> Vec<String> {
    let filter = format!("label=citadel.request={request}");
    common::docker(None, &["ps", "-aq", "--no-trunc", "--filter", &filter])
        .await
        .lines()
        .map(str::to_string)
        .collect()
}

/// Removes every container of `request` when the test ends, passed or failed.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label=citadel.request={}", self.0);
        let Ok(out) = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        else {
            return;
        };
        let ids = String::from_utf8_lossy(&out.stdout).to_string();
        let ids: Vec<&str> = ids.lines().collect();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(ids)
                .output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_of_another_engine_or_cluster_survives_the_leaders_reconcile() {
    let image = citadel_testkit::dockerd::test_image().unwrap_or_else(|e| panic!("{e}"));
    let mut w = World::start().await;
    let id = format!("trust-{}", uuid::Uuid::new_v4());
    let _cleanup = Cleanup(id.clone());
    w.put_engine("local", json!({"addr": LOCAL})).await;
    w.start_controller(&[]).await;
    let request = common::request_json(
        0.1,
        32,
        json!({"image": image, "launch": true, "network_mode": "none", "entrypoint": ["sleep", "300"]}),
    );
    common::put_request(&w.client, &w.keys, &id, request).await;
    let launched = common::wait_decision_where(&w.client, &w.keys, &id, WAIT, "launched", |d| {
        d.run.as_ref().is_some_and(|r| !r.container_id.is_empty())
    })
    .await;
    let ours = launched.run.expect("run").container_id;

    // Strangers carrying the same request id: labelled for another engine, for another
    // cluster, for no cluster at all.
    let prefix = w.keys.prefix().to_string();
    let strangers: Vec<(&str, Vec<String>)> = vec![
        (
            "another engine",
            vec![
                "citadel.engine=elsewhere".into(),
                format!("citadel.cluster={prefix}"),
            ],
        ),
        (
            "another cluster",
            vec![
                "citadel.engine=local".into(),
                "citadel.cluster=/other".into(),
            ],
        ),
        ("no cluster", vec!["citadel.engine=local".into()]),
    ];
    let mut kept = Vec::new();
    for (what, labels) in &strangers {
        let mut args = vec!["run", "-d", "--network", "none"];
        let request_label = format!("citadel.request={id}");
        args.extend(["--label", &request_label]);
        for l in labels {
            args.extend(["--label", l.as_str()]);
        }
        args.extend([image.as_str(), "sleep", "300"]);
        let stranger = common::docker(None, &args).await;
        assert!(!stranger.is_empty(), "{what}: docker run printed no id");
        kept.push((*what, stranger));
    }

    // Released: the leader stops its own container, by all three labels.
    common::delete_key(&w.client, w.keys.request(&common::rid(&id))).await;
    common::wait_until("the leader's container is removed", WAIT, || async {
        !containers_of(&id).await.contains(&ours)
    })
    .await;
    w.rounds("local", ROUNDS, || {}).await;

    let left = containers_of(&id).await;
    for (what, stranger) in &kept {
        assert!(
            left.contains(stranger),
            "the container of {what} was removed: {left:?}"
        );
        let state = common::docker(None, &["inspect", "-f", "{{.State.Running}}", stranger]).await;
        assert_eq!(state, "true", "the container of {what} was stopped");
    }
    assert_eq!(left.len(), kept.len(), "{left:?}");
}
