//! Issue 4 end to end: the real `citadel` binary as controller replicas (`controller --docker`),
//! a real etcd, and extra Docker daemons as engines. Each test checks what the leader wrote to
//! etcd *and* what the engines run, through the docker CLI.
//!
//! Each test has its own etcd, its own daemons and its own controllers; dropping its [`Cluster`]
//! kills the controllers first, then removes every daemon with its containers (a paused daemon is
//! resumed first), so nothing is left behind, passed or failed. Figures are printed, never
//! asserted: run with `cargo test --test launch -- --nocapture` to see them.
//!
//! Needs root and the system daemon (the test image is copied from it).

#![cfg(target_os = "linux")]

use std::process::Output;
use std::time::{Duration, Instant};

use citadel::keys::Keys;
use citadel::model::{ContainerState, Decision, Status};
use citadel_testkit::child::Signal;
use citadel_testkit::dockerd::DockerdProcess;
use citadel_testkit::etcd::EtcdProcess;
use etcd_client::Client;
use serde_json::{Value, json};
use tempfile::TempDir;

mod common;
use common::ReplicaProcess;

/// Built by `scripts/test-image.sh` on the system daemon, copied into every extra one.
const IMAGE: &str = "citadel-test/busybox:1";
/// The longest any single wait here may take.
const WAIT: Duration = Duration::from_secs(30);
/// Fast health rounds, so that a silent engine drops out within seconds.
const FAST: &[&str] = &[
    "--docker",
    "--health-every",
    "0.5",
    "--health-ttl",
    "2",
    "--lease-ttl",
    "2",
];
/// What every engine offers (given, so that `engine add` does not probe).
const ENGINE_CPUS: &str = "2";
const ENGINE_MEMORY_MB: &str = "2048";

/// Builds the test image on the system daemon, once per test binary.
fn ensure_test_image() {
    let built = citadel_testkit::dockerd::test_image().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        built, IMAGE,
        "scripts/test-image.sh builds {IMAGE} by default"
    );
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// Sends `sig` to a process of this test's.
fn signal(pid: u32, sig: Signal) {
    citadel_testkit::child::signal(pid, sig).unwrap_or_else(|e| panic!("kill {sig:?} {pid}: {e}"));
}

/// A request the leader launches: 0.5 cpus, 64 MB, no network (the extra daemons have no
/// bridge), running `entrypoint` in the test image.
fn request(kind: &str, entrypoint: &[&str]) -> String {
    common::request_json(
        0.5,
        64,
        json!({
            "image": IMAGE,
            "type": kind,
            "launch": true,
            "network_mode": "none",
            "entrypoint": entrypoint,
        }),
    )
}

/// The docker run state of a decision: container id, state, engine.
fn run_of(d: &Decision) -> (&str, Option<&ContainerState>, &str) {
    d.run.as_ref().map_or(("", None, ""), |r| {
        (r.container_id.as_str(), r.state.as_ref(), r.engine.as_str())
    })
}

fn is_running(d: &Decision) -> bool {
    let (container, state, _) = run_of(d);
    d.status == Status::Placed && !container.is_empty() && state == Some(&ContainerState::Running)
}

/// An extra Docker daemon registered (or to be registered) as engine `id`.
struct Engine {
    id: String,
    dockerd: DockerdProcess,
    /// SIGSTOPped: resumed when dropped, or the daemon could not be stopped and cleaned.
    paused: bool,
}

impl Engine {
    fn addr(&self) -> String {
        self.dockerd.addr()
    }

    fn pause(&mut self) {
        signal(self.dockerd.pid(), Signal::STOP);
        self.paused = true;
    }

    fn resume(&mut self) {
        signal(self.dockerd.pid(), Signal::CONT);
        self.paused = false;
    }

    async fn docker(&self, args: &[&str]) -> String {
        common::docker(Some(&self.addr()), args).await
    }

    /// Full ids of every container (any state) labelled with request `id`.
    async fn containers_of(&self, id: &str) -> Vec<String> {
        let filter = format!("label=citadel.request={id}");
        self.docker(&["ps", "-aq", "--no-trunc", "--filter", &filter])
            .await
            .lines()
            .map(str::to_string)
            .collect()
    }

    async fn inspect(&self, container: &str) -> Value {
        let text = self.docker(&["inspect", container]).await;
        let mut all: Vec<Value> = serde_json::from_str(&text).expect("docker inspect prints JSON");
        assert_eq!(all.len(), 1, "{text}");
        all.remove(0)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.paused {
            let _ = citadel_testkit::child::signal(self.dockerd.pid(), Signal::CONT);
        }
    }
}

/// One test's world. Fields drop in order: controllers, engines (their daemons and containers),
/// the etcd client, etcd, the log directory.
struct Cluster {
    controllers: Vec<ReplicaProcess>,
    engines: Vec<Engine>,
    client: Client,
    keys: Keys,
    etcd: EtcdProcess,
    dir: TempDir,
}

impl Cluster {
    /// A fresh etcd and one extra daemon per engine id (named `<test>-<id>`, not registered yet),
    /// each holding the test image.
    async fn start(test: &str, engine_ids: &[&str]) -> Cluster {
        ensure_test_image();
        let started = Instant::now();
        let etcd = common::start_etcd().await;
        let client = common::connect(&etcd).await;
        let daemons = futures_util::future::join_all(engine_ids.iter().map(|id| async move {
            let name = format!("{test}-{id}");
            let dockerd = DockerdProcess::start(&name)
                .await
                .unwrap_or_else(|e| panic!("start dockerd {name}: {e}"));
            dockerd
                .load_image(IMAGE)
                .await
                .unwrap_or_else(|e| panic!("load {IMAGE} into {name}: {e}"));
            Engine {
                id: id.to_string(),
                dockerd,
                paused: false,
            }
        }))
        .await;
        println!(
            "{test}: etcd and {} engine(s) up in {} ms",
            daemons.len(),
            started.elapsed().as_millis()
        );
        Cluster {
            controllers: Vec::new(),
            engines: daemons,
            client,
            keys: common::keys(),
            etcd,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A controller replica with `args`, allowed to dial this test's daemons (`--docker-allow`:
    /// a leader dials no other address than those its flags name).
    fn start_controller(&mut self, id: &str, args: &[&str]) {
        let addrs: Vec<String> = self.engines.iter().map(Engine::addr).collect();
        let mut args = args.to_vec();
        for addr in &addrs {
            args.extend(["--docker-allow", addr.as_str()]);
        }
        let c = ReplicaProcess::start(&self.etcd.endpoint(), id, self.dir.path(), &args);
        self.controllers.push(c);
    }

    fn engine(&self, id: &str) -> &Engine {
        self.engines
            .iter()
            .find(|e| e.id == id)
            .unwrap_or_else(|| panic!("no engine {id}"))
    }

    fn engine_mut(&mut self, id: &str) -> &mut Engine {
        self.engines
            .iter_mut()
            .find(|e| e.id == id)
            .unwrap_or_else(|| panic!("no engine {id}"))
    }

    async fn citadel(&self, args: &[&str]) -> Output {
        let ep = self.etcd.endpoint();
        let mut all = vec!["--etcd", ep.as_str()];
        all.extend_from_slice(args);
        common::citadel(&all, &[]).await
    }

    /// `citadel engine add` with an explicit offer, then waits for the leader's health key.
    async fn register(&self, id: &str) {
        let addr = self.engine(id).addr();
        let out = self
            .citadel(&[
                "engine",
                "add",
                id,
                "--addr",
                &addr,
                "--cpus",
                ENGINE_CPUS,
                "--memory",
                ENGINE_MEMORY_MB,
            ])
            .await;
        assert!(out.status.success(), "engine add {id}: {}", stderr(&out));
        self.wait_health(id).await;
    }

    async fn has_health(&self, id: &str) -> bool {
        common::get(&self.client, &self.keys.health(&common::eid(id)))
            .await
            .is_some()
    }

    async fn wait_health(&self, id: &str) {
        let started = Instant::now();
        common::wait_until(&format!("engine {id} has a health key"), WAIT, || {
            self.has_health(id)
        })
        .await;
        println!(
            "  engine {id}: health key after {} ms",
            started.elapsed().as_millis()
        );
    }

    async fn put_request(&self, id: &str, json: &str) -> i64 {
        common::put_request(&self.client, &self.keys, id, json.to_string()).await
    }

    async fn decision(&self, id: &str) -> Option<Decision> {
        common::decision(&self.client, &self.keys, id).await
    }

    async fn wait_decision(
        &self,
        id: &str,
        what: &str,
        want: impl Fn(&Decision) -> bool,
    ) -> Decision {
        common::wait_decision_where(&self.client, &self.keys, id, WAIT, what, want).await
    }

    /// `(engine, cpus, memory)` of every reservation held for request `id`.
    async fn reservations_of(&self, id: &str) -> Vec<(String, f64, f64)> {
        common::reservations_for(&self.client, &self.keys, id)
            .await
            .into_iter()
            .map(|(e, r)| (e, r.cpus, r.memory))
            .collect()
    }

    /// Polls (every 100 ms, at most [`WAIT`]) until engine `engine` holds no container of
    /// request `id`.
    async fn wait_no_container(&self, engine: &str, id: &str) {
        let e = self.engine(engine);
        let deadline = Instant::now() + WAIT;
        loop {
            let left = e.containers_of(id).await;
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "engine {engine} still holds {left:?} for {id} after {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The controller that leads, once one does.
    async fn wait_leader(&self) -> String {
        common::wait_leader(&self.client, &self.keys, WAIT).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in &self.controllers {
                let log = c.log();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                eprintln!("---- controller {} (last 40 log lines) ----\n{tail}", c.id);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_records_the_container_and_delete_stops_it() {
    let mut c = Cluster::start("rec", &["e1"]).await;
    c.start_controller("ctl-1", FAST);
    c.register("e1").await;

    let id = "web-1";
    let submitted = Instant::now();
    c.put_request(id, &request("service", &["sleep", "300"]))
        .await;
    let d = c.wait_decision(id, "a running container", is_running).await;
    println!(
        "rec: request to running container {} ms",
        submitted.elapsed().as_millis()
    );

    let (container, _, run_engine) = run_of(&d);
    let container = container.to_string();
    assert_eq!(run_engine, "e1", "{d:?}");
    assert_eq!(d.resource.as_ref().map(|r| r.id.as_str()), Some("e1"));
    assert_eq!(
        c.reservations_of(id).await,
        vec![("e1".to_string(), 0.5, 64.0)]
    );
    let e1 = c.engine("e1");
    assert_eq!(e1.containers_of(id).await, vec![container.clone()]);
    let inspected = e1.inspect(&container).await;
    assert_eq!(inspected["State"]["Running"], json!(true), "{inspected}");
    assert_eq!(inspected["HostConfig"]["NanoCpus"], json!(500_000_000));
    assert_eq!(inspected["HostConfig"]["Memory"], json!(64 * 1024 * 1024));
    assert_eq!(
        inspected["Config"]["Labels"],
        json!({"citadel.request": id, "citadel.engine": "e1", "citadel.cluster": c.keys.prefix()})
    );
    let name = d.run.as_ref().map(|r| r.container_name.clone());
    assert_eq!(
        inspected["Name"]
            .as_str()
            .map(|n| n.trim_start_matches('/')),
        name.as_deref()
    );
    common::assert_invariants(&c.client, &c.keys).await;

    // Deleting the request is the user's "done": decision, reservation and container go.
    let deleted = Instant::now();
    common::delete_key(&c.client, c.keys.request(&common::rid(id))).await;
    common::wait_until("the decision is removed", WAIT, || async {
        c.decision(id).await.is_none()
    })
    .await;
    let decision_gone = deleted.elapsed();
    common::wait_until("the reservation is released", WAIT, || async {
        c.reservations_of(id).await.is_empty()
    })
    .await;
    c.wait_no_container("e1", id).await;
    println!(
        "rec: after the delete, decision gone in {} ms, container gone in {} ms",
        decision_gone.as_millis(),
        deleted.elapsed().as_millis()
    );
    let report = common::assert_invariants(&c.client, &c.keys).await;
    assert_eq!(report.decided, 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_failure_is_retried_elsewhere_then_failed() {
    let mut c = Cluster::start("fail", &["a", "b"]).await;
    let mut args = FAST.to_vec();
    args.extend(["--launch-tries", "2"]);
    c.start_controller("ctl-1", &args);
    c.register("a").await;
    c.register("b").await;

    let id = "bad-entrypoint";
    let submitted = Instant::now();
    c.put_request(id, &request("service", &["/nonexistent"]))
        .await;
    let d = c
        .wait_decision(id, "status failed", |d| d.status == Status::Failed)
        .await;
    println!(
        "fail: request to failed on both engines {} ms",
        submitted.elapsed().as_millis()
    );

    let attempts = d
        .run
        .as_ref()
        .map(|r| r.attempts.clone())
        .unwrap_or_default();
    assert_eq!(attempts.len(), 2, "{d:#?}");
    let mut tried: Vec<&str> = attempts.iter().map(|a| a.engine.as_str()).collect();
    tried.sort();
    assert_eq!(tried, ["a", "b"], "one attempt per engine: {d:#?}");
    for a in &attempts {
        assert!(
            a.error.contains("/nonexistent") && a.error.contains("no such file"),
            "Docker's own error text: {a:?}"
        );
    }
    assert!(d.resource.is_none(), "{d:?}");
    let (container, _, _) = run_of(&d);
    assert!(container.is_empty(), "{d:?}");
    assert!(c.reservations_of(id).await.is_empty());
    c.wait_no_container("a", id).await;
    c.wait_no_container("b", id).await;
    common::assert_invariants(&c.client, &c.keys).await;
}

/// A batch running `script` under `sh -c` ends `exited` with code 3, holding no reservation; its
/// container stays on the engine (for its logs) and is not run again.
async fn batch_exit_frees_its_reservation(test: &str, script: &str) {
    let mut c = Cluster::start(test, &["e1"]).await;
    c.start_controller("ctl-1", FAST);
    c.register("e1").await;

    let id = "job-exit-3";
    let submitted = Instant::now();
    c.put_request(id, &request("batch", &["sh", "-c", script]))
        .await;
    let d = c
        .wait_decision(id, "status exited", |d| d.status == Status::Exited)
        .await;
    println!(
        "{test}: `{script}` from request to exited {} ms",
        submitted.elapsed().as_millis()
    );

    let run = d.run.clone().expect("an exited decision says how it ran");
    assert_eq!(run.exit_code, Some(3), "{d:#?}");
    assert_eq!(run.engine, "e1");
    assert!(d.resource.is_some(), "it says where it ran: {d:?}");
    let all = common::reservations(&c.client, &c.keys).await;
    assert!(all.is_empty(), "no reservation at all: {all:?}");
    let e1 = c.engine("e1");
    assert_eq!(e1.containers_of(id).await, vec![run.container_id.clone()]);
    let inspected = e1.inspect(&run.container_id).await;
    assert_eq!(inspected["State"]["Status"], json!("exited"));
    assert_eq!(inspected["State"]["ExitCode"], json!(3));
    let report = common::assert_invariants(&c.client, &c.keys).await;
    assert_eq!((report.placed, report.ended), (0, 1), "{report:?}");
}

/// The container exits within milliseconds of its start, before the leader has recorded the
/// launch: the usual case for a short batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_exit_frees_its_reservation() {
    batch_exit_frees_its_reservation("exit", "exit 3").await;
}

/// The same batch, exiting after its launch was recorded: the die event path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_exits_after_its_launch_is_recorded_frees_its_reservation() {
    batch_exit_frees_its_reservation("exit-late", "sleep 2; exit 3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_engine_moves_services_and_loses_batches() {
    let mut c = Cluster::start("lost", &["a", "b"]).await;
    c.start_controller("ctl-1", FAST);
    c.register("a").await;

    let (svc, job) = ("svc-1", "job-1");
    c.put_request(svc, &request("service", &["sleep", "300"]))
        .await;
    c.put_request(job, &request("batch", &["sleep", "300"]))
        .await;
    for id in [svc, job] {
        let d = c.wait_decision(id, "a running container", is_running).await;
        assert_eq!(run_of(&d).2, "a", "{d:?}");
    }
    // Only now is there somewhere else to go.
    c.register("b").await;

    let killed = Instant::now();
    c.engine_mut("a").dockerd.kill().await;

    let j = c
        .wait_decision(job, "status lost", |d| d.status == Status::Lost)
        .await;
    let job_lost = killed.elapsed();
    let s = c
        .wait_decision(svc, "a running container on b", |d| {
            is_running(d) && run_of(d).2 == "b"
        })
        .await;
    let svc_moved = killed.elapsed();
    println!(
        "lost: after SIGKILL of engine a's dockerd, the batch was lost in {} ms, the service \
         ran on b in {} ms (health TTL 2 s)",
        job_lost.as_millis(),
        svc_moved.as_millis()
    );

    let job_run = j.run.clone().expect("run");
    assert_eq!(job_run.lost, ["a"], "{j:#?}");
    assert_eq!(job_run.state, Some(ContainerState::Lost), "{j:#?}");
    assert!(c.reservations_of(job).await.is_empty());
    let svc_run = s.run.clone().expect("run");
    assert_eq!(svc_run.lost, ["a"], "{s:#?}");
    assert_eq!(s.resource.as_ref().map(|r| r.id.as_str()), Some("b"));
    assert_eq!(
        c.reservations_of(svc).await,
        vec![("b".to_string(), 0.5, 64.0)]
    );
    let b = c.engine("b");
    assert_eq!(
        b.containers_of(svc).await,
        vec![svc_run.container_id.clone()]
    );
    let inspected = b.inspect(&svc_run.container_id).await;
    assert_eq!(inspected["State"]["Running"], json!(true), "{inspected}");
    assert!(
        b.containers_of(job).await.is_empty(),
        "a lost batch is not run again"
    );
    let report = common::assert_invariants(&c.client, &c.keys).await;
    assert_eq!((report.placed, report.ended), (1, 1), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_between_placement_and_launch_launches_once() {
    let mut c = Cluster::start("once", &["e"]).await;
    // A longer health TTL: the request must be placed while the paused engine's key lives.
    let args = [
        "--docker",
        "--health-every",
        "0.5",
        "--health-ttl",
        "5",
        "--lease-ttl",
        "2",
    ];
    for i in 1..=3 {
        c.start_controller(&format!("ctl-{i}"), &args);
    }
    let first = c.wait_leader().await;
    c.register("e").await;

    // Pause the engine, then submit: placed at once, but the launch cannot reach the engine.
    let mut placed = None;
    for attempt in 1..=3 {
        c.wait_health("e").await;
        c.engine_mut("e").pause();
        let id = format!("once-{attempt}");
        c.put_request(&id, &request("service", &["sleep", "300"]))
            .await;
        let d = c.wait_decision(&id, "a decision", |_| true).await;
        if d.status == Status::Placed {
            placed = Some((id, d));
            break;
        }
        println!(
            "once: {id} missed the window ({}: {}); again",
            d.status, d.reason
        );
        c.engine_mut("e").resume();
        common::delete_key(&c.client, c.keys.request(&common::rid(&id))).await;
    }
    let (id, d) = placed.expect("placed while the paused engine still had a health key");
    assert_eq!(d.decided_by, first, "{d:?}");
    // Give the leader time to start its launch against the paused daemon.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let d = c.decision(&id).await.expect("still decided");
    assert_eq!(d.status, Status::Placed, "{d:?}");
    assert!(
        run_of(&d).0.is_empty(),
        "no container while its engine is paused: {d:?}"
    );

    let leader = c
        .controllers
        .iter()
        .position(|r| r.id == first)
        .expect("the leader is one of ours");
    let killed = Instant::now();
    c.controllers[leader].signal(Signal::KILL);
    let _ = c.controllers[leader].child.wait();
    c.engine_mut("e").resume();

    let d = c
        .wait_decision(&id, "a running container", is_running)
        .await;
    let launched = killed.elapsed();
    let next = c.wait_leader().await;
    assert_ne!(next, first);
    println!(
        "once: leader {first} SIGKILLed with {id} placed but not launched; {next} had it \
         running {} ms later (lease TTL 2 s)",
        launched.as_millis()
    );

    let container = run_of(&d).0.to_string();
    let e = c.engine("e");
    // Watch a little longer: a twin would show up beside it.
    let watch_until = Instant::now() + Duration::from_secs(3);
    loop {
        let found = e.containers_of(&id).await;
        assert_eq!(found, vec![container.clone()], "exactly one container");
        if Instant::now() >= watch_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let inspected = e.inspect(&container).await;
    assert_eq!(inspected["State"]["Running"], json!(true), "{inspected}");
    common::assert_invariants(&c.client, &c.keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_ls_shows_health_and_live_usage() {
    let mut c = Cluster::start("ls", &["e1"]).await;
    c.start_controller("ctl-1", FAST);
    c.register("e1").await;
    let id = "web-ls";
    c.put_request(id, &request("service", &["sleep", "300"]))
        .await;
    c.wait_decision(id, "a running container", is_running).await;

    // The health key is rewritten every round: soon it counts the container.
    let since = Instant::now();
    let deadline = since + WAIT;
    let row = loop {
        let out = c.citadel(&["engine", "ls"]).await;
        assert!(out.status.success(), "engine ls: {}", stderr(&out));
        let text = stdout(&out);
        let row = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some("e1"))
            .unwrap_or_else(|| panic!("no row for e1:\n{text}"))
            .to_string();
        // ENGINE CPUS MEMORY LIVE-CPU LIVE-MB CTRS HEALTH CONTACT ("2s ago") LABELS
        let cols: Vec<&str> = row.split_whitespace().collect();
        let ctrs: usize = cols.get(5).and_then(|n| n.parse().ok()).unwrap_or(0);
        if cols.get(6) == Some(&"ok") && ctrs >= 1 {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "e1 never showed health and a container:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("ls: after {} ms: {row}", since.elapsed().as_millis());
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1], "0.5/2", "reserved/total cpus: {row}");
    assert_eq!(cols[2], "64/2048", "reserved/total MB: {row}");
    assert!(
        cols[7].ends_with('s') && cols[8] == "ago",
        "contact as an age: {row}"
    );

    // Profiles are written every 5 health rounds.
    let since = Instant::now();
    let deadline = since + WAIT;
    let profile = loop {
        let out = c.citadel(&["profile"]).await;
        assert!(out.status.success(), "profile: {}", stderr(&out));
        let text = stdout(&out);
        if let Some(row) = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(IMAGE))
        {
            break row.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no profile row for {IMAGE}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "ls: profile row after {} ms: {profile}",
        since.elapsed().as_millis()
    );
    let cols: Vec<&str> = profile.split_whitespace().collect();
    let samples: usize = cols[1].parse().expect("a sample count");
    assert!(samples >= 1, "{profile}");
    assert!(cols[2].starts_with("0.5/"), "requested cpus: {profile}");
    assert!(cols[3].starts_with("64/"), "requested MB: {profile}");
}

/// `submit --wait=running` exits 0 once the container runs, and 5 when it fails to start on
/// every engine it may try; `--wait` (placed) exits 0 at the placement alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_wait_running_and_failed_exit_codes() {
    let mut c = Cluster::start("waitrun", &["a"]).await;
    let mut args = FAST.to_vec();
    args.extend(["--launch-tries", "1"]);
    c.start_controller("ctl-1", &args);
    c.register("a").await;
    let submit = async |c: &Cluster, id: &str, body: &str, wait: &str| {
        let file = common::request_file(c.dir.path(), &format!("{id}.json"), body);
        c.citadel(&["submit", &file, "--id", id, wait, "--timeout", "30"])
            .await
    };

    let started = Instant::now();
    let out = submit(
        &c,
        "runs",
        &request("service", &["sleep", "300"]),
        "--wait=running",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let d: Decision = serde_json::from_str(&stdout(&out)).expect("the decision, as JSON");
    assert!(is_running(&d), "{d:#?}");
    println!(
        "waitrun: submit --wait=running returned after {} ms",
        started.elapsed().as_millis()
    );

    let out = submit(
        &c,
        "placed",
        &request("service", &["sleep", "300"]),
        "--wait",
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = submit(
        &c,
        "fails",
        &request("service", &["/nonexistent"]),
        "--wait=running",
    )
    .await;
    assert_eq!(out.status.code(), Some(5), "failed: {}", stderr(&out));
    assert!(
        stderr(&out).starts_with("citadel: error: failed:"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_container_has_stopped_before_the_preemptors_starts() {
    let mut c = Cluster::start("preempt", &["e1"]).await;
    c.start_controller("ctl-1", FAST);
    c.register("e1").await;
    let since = common::epoch_secs();
    // Each takes the whole engine (2 cpus).
    let asks = |priority: i64| {
        common::request_json(
            2.0,
            64,
            json!({"image": IMAGE, "launch": true, "network_mode": "none",
                   "entrypoint": ["sleep", "300"], "priority": priority}),
        )
    };
    c.put_request("low", &asks(0)).await;
    c.wait_decision("low", "a running container", is_running)
        .await;
    c.put_request("urgent", &asks(10)).await;
    c.wait_decision("urgent", "a running container", is_running)
        .await;
    let low = c.decision("low").await.expect("low's decision");
    assert_eq!(low.status, Status::Preempted, "{low:?}");
    c.wait_no_container("e1", "low").await;
    // Docker's own record: the victim's container died before the preemptor's started.
    let addr = c.engine("e1").addr();
    common::assert_died_before_started(Some(&addr), since, "low", "urgent").await;
    common::assert_invariants(&c.client, &c.keys).await;
}
