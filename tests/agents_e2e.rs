//! Agents end to end: the real `citadel` binary as a controller (without `--docker`: it dials
//! no engine) and as one agent per engine, a real etcd, and extra Docker daemons as the
//! engines. What the agents run is read from the daemons themselves, through the docker CLI.
//!
//! Each test has its own etcd, daemons, controller and agents; dropping its [`World`] kills the
//! processes, then removes every daemon with its containers. Needs root and the system daemon
//! (the test image is copied from it).

#![cfg(target_os = "linux")]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use citadel::keys::Keys;
use citadel::model::{Decision, RunReport, Status};
use citadel_testkit::child::Signal;
use citadel_testkit::dockerd::DockerdProcess;
use citadel_testkit::etcd::EtcdProcess;
use etcd_client::Client;
use serde_json::json;
use tempfile::TempDir;

mod common;
use common::{Proxy, ReplicaProcess};

const IMAGE: &str = "citadel-test/busybox:1";
const WAIT: Duration = Duration::from_secs(40);
/// The agents' lease: short, so that a lost agent is noticed within seconds.
const TTL: &str = "6s";

fn ensure_test_image() {
    let built = citadel_testkit::dockerd::test_image().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(built, IMAGE);
}

/// A service the agents launch: no network (the extra daemons have no bridge).
fn service() -> String {
    common::request_json(
        0.5,
        64,
        json!({"image": IMAGE, "launch": true, "network_mode": "none",
               "entrypoint": ["sleep", "600"]}),
    )
}

/// One engine: an extra daemon and, while it runs, its agent.
struct Engine {
    id: String,
    dockerd: DockerdProcess,
    agent: Option<Child>,
    log: PathBuf,
}

impl Engine {
    async fn docker(&self, args: &[&str]) -> String {
        let addr = self.dockerd.addr();
        common::docker(Some(&addr), args).await
    }

    /// Containers of request `id` this daemon runs (running only).
    async fn running(&self, id: &str) -> Vec<String> {
        let filter = format!("label=citadel.request={id}");
        self.docker(&["ps", "-q", "--no-trunc", "--filter", &filter])
            .await
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Containers of request `id` this daemon holds, in any state.
    async fn holds(&self, id: &str) -> Vec<String> {
        let filter = format!("label=citadel.request={id}");
        self.docker(&["ps", "-aq", "--no-trunc", "--filter", &filter])
            .await
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(a) = &self.agent {
            let _ = citadel_testkit::child::signal(a.id(), Signal::CONT);
        }
        self.kill_agent();
    }
}

struct World {
    controllers: Vec<ReplicaProcess>,
    engines: Vec<Engine>,
    client: Client,
    keys: Keys,
    etcd: EtcdProcess,
    dir: TempDir,
}

impl World {
    async fn start(test: &str, ids: &[&str]) -> World {
        ensure_test_image();
        let etcd = common::start_etcd().await;
        let client = common::connect(&etcd).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let engines = futures_util::future::join_all(ids.iter().map(|id| {
            let log = dir.path().join(format!("agent-{id}.log"));
            async move {
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
                    agent: None,
                    log,
                }
            }
        }))
        .await;
        let mut w = World {
            controllers: Vec::new(),
            engines,
            client,
            keys: common::keys(),
            etcd,
            dir,
        };
        let ep = w.etcd.endpoint();
        w.controllers.push(ReplicaProcess::start(
            &ep,
            "ctl-1",
            w.dir.path(),
            &["--lease-ttl", "2"],
        ));
        w
    }

    fn engine(&mut self, id: &str) -> &mut Engine {
        self.engines
            .iter_mut()
            .find(|e| e.id == id)
            .unwrap_or_else(|| panic!("no engine {id}"))
    }

    /// Starts engine `id`'s agent, reaching etcd at `endpoint` (default: directly).
    fn start_agent(&mut self, id: &str, endpoint: Option<String>, extra: &[&str]) {
        let endpoint = endpoint.unwrap_or_else(|| self.etcd.endpoint());
        let e = self.engine(id);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&e.log)
            .expect("agent log");
        let addr = e.dockerd.addr();
        let child = Command::new(ReplicaProcess::binary())
            .args([
                "--etcd", &endpoint, "agent", "--engine", id, "--docker", &addr,
            ])
            .args([
                "--ttl",
                TTL,
                "--stop-grace",
                "1s",
                "--cpus",
                "2",
                "--memory",
                "2048",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start citadel agent");
        e.agent = Some(child);
    }

    async fn wait_registered(&self, id: &str) {
        let key = self.keys.health(&common::eid(id));
        common::wait_until(&format!("agent {id} keeps a health key"), WAIT, || async {
            common::get(&self.client, &key).await.is_some()
        })
        .await;
    }

    async fn decision(&self, id: &str) -> Option<Decision> {
        common::decision(&self.client, &self.keys, id).await
    }

    /// The agent's report on `id` from the engine its decision names.
    async fn report(&self, id: &str) -> Option<(String, RunReport)> {
        let d = self.decision(id).await?;
        let engine = d.resource.as_ref()?.id.clone();
        let got = common::get(
            &self.client,
            &self.keys.run(&common::eid(&engine), &common::rid(id)),
        )
        .await?;
        Some((engine, serde_json::from_slice(&got.value).ok()?))
    }

    /// Waits until `id` is placed and its agent reports it running; returns the engine.
    async fn wait_running(&self, id: &str, not_on: Option<&str>) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((engine, r)) = self.report(id).await
                && r.state == Some(citadel::model::ContainerState::Running)
                && Some(engine.as_str()) != not_on
                && self
                    .decision(id)
                    .await
                    .is_some_and(|d| d.status == Status::Placed)
            {
                return engine;
            }
            assert!(
                Instant::now() < deadline,
                "{id}: not reported running{} within {WAIT:?}: {:?}",
                not_on.map(|e| format!(" off {e}")).unwrap_or_default(),
                self.decision(id).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn check(&self) -> citadel::invariants::Report {
        citadel::invariants::check_etcd(&self.client, &self.keys, 1.0)
            .await
            .expect("citadel check")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in &self.controllers {
                let log = c.log();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!(
                    "---- {} ----\n{}",
                    c.id,
                    lines[lines.len().saturating_sub(30)..].join("\n")
                );
            }
            for e in &self.engines {
                let log = std::fs::read_to_string(&e.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!(
                    "---- agent {} ----\n{}",
                    e.id,
                    lines[lines.len().saturating_sub(30)..].join("\n")
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_run_what_is_placed_on_them_and_a_killed_agents_services_move() {
    let mut w = World::start("agents2", &["a1", "a2"]).await;
    w.start_agent("a1", None, &[]);
    w.start_agent("a2", None, &[]);
    w.wait_registered("a1").await;
    w.wait_registered("a2").await;

    let ids = ["s1", "s2", "s3", "s4"];
    for id in ids {
        common::put_request(&w.client, &w.keys, id, service()).await;
    }
    let mut on_a1 = Vec::new();
    for id in ids {
        let engine = w.wait_running(id, None).await;
        let (_, report) = w.report(id).await.expect("a report");
        let e = w.engine(&engine);
        assert_eq!(
            e.running(id).await,
            vec![report.container_id.clone()],
            "{id} on {engine}"
        );
        if engine == "a1" {
            on_a1.push(id);
        }
    }
    assert!(
        !on_a1.is_empty() && on_a1.len() < ids.len(),
        "spread over two equal engines uses both: {on_a1:?} on a1"
    );

    // The agent of a1 dies: its lease lapses, and its services are placed on a2 and run there.
    w.engine("a1").kill_agent();
    for id in &on_a1 {
        let engine = w.wait_running(id, Some("a1")).await;
        assert_eq!(engine, "a2");
        assert_eq!(
            w.engine("a2").running(id).await.len(),
            1,
            "{id} runs once on a2"
        );
    }
    // Back, it finds its stale containers unassigned and removes them.
    w.start_agent("a1", None, &[]);
    for id in &on_a1 {
        let a1 = &w.engines[0];
        common::wait_until(&format!("a1 removes its stale {id}"), WAIT, || async {
            a1.holds(id).await.is_empty()
        })
        .await;
    }
    let report = w.check().await;
    assert_eq!(report.violations(), 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_from_etcd_stops_its_service_before_it_runs_elsewhere() {
    let mut w = World::start("agentcut", &["a1", "a2"]).await;
    let proxy = Proxy::start(&w.etcd).await;
    w.start_agent("a1", Some(proxy.endpoint()), &[]);
    w.wait_registered("a1").await;
    common::put_request(&w.client, &w.keys, "svc", service()).await;
    assert_eq!(w.wait_running("svc", None).await, "a1");
    w.start_agent("a2", None, &[]);
    w.wait_registered("a2").await;

    // Both daemons, polled without pause from before the cut until the service runs on a2.
    let stop = Arc::new(AtomicBool::new(false));
    let (a1, a2) = (w.engines[0].dockerd.addr(), w.engines[1].dockerd.addr());
    let poller = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let running = |addr: String| async move {
                let out = common::docker(
                    Some(&addr),
                    &["ps", "-q", "--filter", "label=citadel.request=svc"],
                )
                .await;
                !out.trim().is_empty()
            };
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (one, two) = tokio::join!(running(a1.clone()), running(a2.clone()));
                samples.push((one, two));
            }
            samples
        })
    };
    proxy.cut();
    assert_eq!(w.wait_running("svc", Some("a1")).await, "a2");
    // A few more samples with the service on a2.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = poller.await.expect("poller");
    let twins = samples.iter().filter(|(one, two)| *one && *two).count();
    assert!(
        samples.iter().any(|(one, _)| *one),
        "it ran on a1 while polled"
    );
    assert_eq!(
        twins,
        0,
        "{twins} of {} samples saw it running on both engines",
        samples.len()
    );

    // Healed, a1's agent removes the container it stopped: its assignment moved.
    proxy.heal();
    let a1 = &w.engines[0];
    common::wait_until("a1 removes the container it stopped", WAIT, || async {
        a1.holds("svc").await.is_empty()
    })
    .await;
    let report = w.check().await;
    assert_eq!(report.violations(), 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_root_escape_is_refused_at_placement_and_runs_only_where_declared() {
    let mut w = World::start("agentesc", &["a1", "a2"]).await;
    let shared = tempfile::tempdir().expect("a host folder to declare");
    let declared = shared.path().to_string_lossy().to_string();
    w.start_agent("a1", None, &[]);
    w.wait_registered("a1").await;
    let escape = |source: &str| {
        common::request_json(
            0.1,
            16,
            json!({"image": IMAGE, "launch": true, "network_mode": "none",
                   "volumes": [format!("{source}:/host")],
                   "entrypoint": ["sh", "-c", "touch /host/escaped; sleep 600"]}),
        )
    };
    // No engine allows a host path: unschedulable, with the reason; nothing runs anywhere.
    common::put_request(&w.client, &w.keys, "root", escape("/")).await;
    let d = common::wait_decision_where(&w.client, &w.keys, "root", WAIT, "unschedulable", |d| {
        d.status == Status::Unschedulable
    })
    .await;
    assert!(d.reason.contains("host path /"), "{}", d.reason);
    // An engine that declares a folder runs a request that binds it, and only there.
    w.start_agent("a2", None, &["--host-volume", &declared]);
    w.wait_registered("a2").await;
    common::put_request(&w.client, &w.keys, "data", escape(&declared)).await;
    assert_eq!(w.wait_running("data", None).await, "a2");
    common::wait_until(
        "the container wrote into the declared folder",
        WAIT,
        || async { shared.path().join("escaped").exists() },
    )
    .await;
    // The root escape is still refused: a2 declares only its folder.
    let d = w.decision("root").await.expect("decision");
    assert_eq!(d.status, Status::Unschedulable, "{}", d.reason);
    assert!(w.engines[0].holds("root").await.is_empty());
    assert!(w.engines[1].holds("root").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_service_has_stopped_before_the_request_that_took_its_room_starts() {
    let mut w = World::start("preempt", &["p1"]).await;
    w.start_agent("p1", None, &[]);
    w.wait_registered("p1").await;
    let since = common::epoch_secs();
    // Each takes the whole engine (2 cpus).
    let asks = |priority: i64| {
        common::request_json(
            2.0,
            64,
            json!({"image": IMAGE, "launch": true, "network_mode": "none",
                   "entrypoint": ["sleep", "600"], "priority": priority}),
        )
    };
    common::put_request(&w.client, &w.keys, "low", asks(0)).await;
    w.wait_running("low", None).await;
    common::put_request(&w.client, &w.keys, "urgent", asks(10)).await;
    assert_eq!(w.wait_running("urgent", None).await, "p1");
    let low = w.decision("low").await.expect("low's decision");
    assert_eq!(low.status, Status::Preempted, "{low:?}");
    assert_eq!(low.preempted_by, "urgent");
    let e = w.engine("p1");
    assert!(
        e.running("low").await.is_empty(),
        "the victim no longer runs"
    );

    // Docker's own record: the victim's container died before the preemptor's started.
    common::assert_died_before_started(Some(&e.dockerd.addr()), since, "low", "urgent").await;
    let report = w.check().await;
    assert_eq!(report.violations(), 0, "{report:?}");
    assert_eq!(report.preempted, 1);
}
