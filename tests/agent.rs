//! `citadel agent` against a real etcd, the real binary and this machine's real dockerd, at the
//! protocol level: the tests write assignment keys themselves (as the leader's placement
//! transaction would, with `Assignment::encode`) and read what the agent registers and reports.
//!
//! Each test works under its own key prefix (so its containers carry their own
//! `citadel.cluster` label) and engine id, and a [`Cluster`] guard removes every container
//! labelled with that prefix when it ends, passed or failed.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use citadel::model::{Assignment, Engine, Health, RunReport};
use citadel_testkit::child::{Signal, signal};
use citadel_testkit::etcd::EtcdProcess;
use common::{WAIT, eid, get, put_raw, rid, text, wait_until};
use etcd_client::Client;
use serde_json::{Value, json};

/// The real binary; `CITADEL_TEST_BIN` names another build of it (a shared target directory
/// may hold another branch's `citadel` by the time the tests run).
fn bin() -> String {
    std::env::var("CITADEL_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_citadel").into())
}

fn image() -> String {
    citadel_testkit::dockerd::test_image().unwrap_or_else(|e| panic!("{e}"))
}

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker {args:?}: {e}"))?;
    if out.status.success() {
        Ok(text(&out.stdout).trim().to_string())
    } else {
        Err(text(&out.stderr).trim().to_string())
    }
}

/// The ids of the containers carrying every label in `labels` (`K=V`), all states.
fn containers(labels: &[String]) -> Vec<String> {
    let filters: Vec<String> = labels.iter().map(|l| format!("label={l}")).collect();
    let mut args: Vec<&str> = vec!["ps", "-aq", "--no-trunc"];
    for f in &filters {
        args.extend(["--filter", f.as_str()]);
    }
    docker(&args)
        .expect("docker ps")
        .lines()
        .map(str::to_string)
        .collect()
}

fn inspect(id: &str) -> Option<Value> {
    let text = docker(&["inspect", id]).ok()?;
    let mut all: Vec<Value> = serde_json::from_str(&text).ok()?;
    (!all.is_empty()).then(|| all.remove(0))
}

/// One test's cluster: its prefix, its engine, its etcd; removes its containers when dropped.
struct Cluster {
    etcd: EtcdProcess,
    prefix: String,
    engine: String,
    client: Client,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn new() -> Cluster {
        let etcd = common::start_etcd().await;
        let client = common::connect(&etcd).await;
        let tag = uuid::Uuid::new_v4().simple().to_string();
        Cluster {
            prefix: format!("/agent-test-{}", &tag[..12]),
            engine: format!("e-{}", &tag[..12]),
            etcd,
            client,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A request id unique to this test: a container's name follows its request id, and
    /// Docker's names are shared by every test on the machine.
    fn req(&self, name: &str) -> String {
        format!("{name}-{}", &self.prefix["/agent-test-".len()..])
    }

    fn keys(&self) -> citadel::keys::Keys {
        citadel::keys::Keys::new(&self.prefix).expect("prefix")
    }

    /// Starts `citadel agent` for this cluster's engine (short TTL, quick sampling) plus
    /// `extra` flags; its log goes to `<dir>/<name>.log`.
    fn agent(&self, name: &str, extra: &[&str]) -> Agent {
        let log = self.dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin())
            .args(["--etcd", &self.etcd.endpoint(), "--prefix", &self.prefix])
            .args([
                "agent",
                "--engine",
                &self.engine,
                "--ttl",
                "5s",
                "--stop-grace",
                "1s",
            ])
            .args(["--sample-every", "1s", "--report-min-interval", "1s"])
            .args(extra)
            .env("RUST_LOG", "citadel=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start citadel agent");
        Agent { child, log }
    }

    /// Writes an assignment as the leader would; its mod revision.
    async fn assign(&self, request: &str, lifecycle: &str, spec: &Value) -> i64 {
        let raw = spec.to_string();
        let value = Assignment::encode(request, &self.engine, lifecycle, 1, raw.as_bytes());
        let key = self.keys().assignment(&eid(&self.engine), &rid(request));
        put_raw(&self.client, key, value).await
    }

    async fn unassign(&self, request: &str) {
        let key = self.keys().assignment(&eid(&self.engine), &rid(request));
        common::delete_key(&self.client, key).await;
    }

    async fn report(&self, request: &str) -> Option<RunReport> {
        let key = self.keys().run(&eid(&self.engine), &rid(request));
        let got = get(&self.client, &key).await?;
        Some(serde_json::from_slice(&got.value).expect("a run report"))
    }

    async fn wait_report(&self, request: &str, want: impl Fn(&RunReport) -> bool) -> RunReport {
        let mut last = None;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(r) = self.report(request).await {
                if want(&r) {
                    return r;
                }
                last = Some(r);
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("request {request}: no such report within {WAIT:?}; last: {last:?}");
            }
            tokio::time::sleep(common::POLL).await;
        }
    }

    async fn health(&self) -> Option<Health> {
        let got = get(&self.client, &self.keys().health(&eid(&self.engine))).await?;
        serde_json::from_slice(&got.value).ok()
    }

    /// The lease the health key lives on.
    async fn health_lease(&self) -> Option<i64> {
        let key = self.keys().health(&eid(&self.engine));
        let got = self.client.kv_client().get(key, None).await.ok()?;
        got.kvs().first().map(|kv| kv.lease())
    }

    async fn engine_record(&self) -> Option<Engine> {
        let got = get(&self.client, &self.keys().engine(&eid(&self.engine))).await?;
        serde_json::from_slice(&got.value).ok()
    }

    /// The containers of `request` in this cluster.
    fn containers_of(&self, request: &str) -> Vec<String> {
        containers(&[
            format!("citadel.request={request}"),
            format!("citadel.cluster={}", self.prefix),
        ])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mine = containers(&[format!("citadel.cluster={}", self.prefix)]);
        let decoys = containers(&[format!("citadel.test={}", self.prefix)]);
        let all: Vec<&str> = mine.iter().chain(&decoys).map(String::as_str).collect();
        if !all.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(all);
            if let Err(e) = docker(&args) {
                eprintln!("cleanup of {}: {e}", self.prefix);
            }
        }
    }
}

/// A running `citadel agent`; SIGKILLed and reaped when dropped.
struct Agent {
    child: Child,
    log: std::path::PathBuf,
}

impl Agent {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn signal(&self, sig: Signal) {
        signal(self.child.id(), sig).expect("signal the agent");
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Its exit code once it exits, within `timeout`.
    async fn exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            tokio::time::sleep(common::POLL).await;
        }
        None
    }
    async fn wait_log(&self, what: &str) {
        wait_until(&format!("the agent logs {what:?}"), WAIT, || async {
            self.log().contains(what)
        })
        .await;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- agent log {} ---\n{}", self.log.display(), self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A service running `sleep` in the test image, with no network (the bridge may be missing).
fn sleeper(extra: Value) -> Value {
    let mut v = json!({
        "image": image(),
        "cpus": 0.1,
        "memory": 32,
        "type": "service",
        "args": ["sleep", "600"],
        "network_mode": "none",
    });
    if let (Some(o), Some(more)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in more {
            o.insert(k.clone(), val.clone());
        }
    }
    v
}

fn running(r: &RunReport) -> bool {
    r.state.as_ref().is_some_and(|s| s.to_string() == "running")
}

#[tokio::test]
async fn registration_keeps_the_operators_settings_and_a_second_agent_is_refused() {
    let c = Cluster::new().await;
    let operator = json!({"id": c.engine, "cpus": 1, "memory": 64, "addr": "tcp://op:2375",
        "labels": ["zone=a"], "cordoned": true});
    put_raw(
        &c.client,
        c.keys().engine(&eid(&c.engine)),
        operator.to_string(),
    )
    .await;
    let (ncpu, mem) = common::docker_info();
    for round in 0..2 {
        let mut a = c.agent(&format!("a{round}"), &["--label", "role=x", "--host", "h1"]);
        let pid = a.pid();
        wait_until(
            "the agent registers and holds the health key",
            WAIT,
            || async {
                let stamped = c
                    .health()
                    .await
                    .and_then(|h| h.agent)
                    .is_some_and(|s| s.pid == pid && s.host == "h1");
                let registered = c
                    .engine_record()
                    .await
                    .and_then(|e| e.agent)
                    .is_some_and(|ag| ag.host == "h1");
                stamped && registered
            },
        )
        .await;
        let e = c.engine_record().await.expect("the engine record");
        assert!(e.cordoned, "the operator's cordon is kept: {e:?}");
        assert_eq!(e.addr, "tcp://op:2375", "the operator's address is kept");
        assert!(e.labels.contains(&"zone=a".to_string()), "{:?}", e.labels);
        assert!(e.labels.contains(&"role=x".to_string()), "{:?}", e.labels);
        assert_eq!(
            e.labels.iter().filter(|l| *l == "role=x").count(),
            1,
            "once each: {:?}",
            e.labels
        );
        assert_eq!((e.cpus, e.memory), (ncpu, mem), "capacity from Docker");
        let h = c.health().await.expect("health");
        assert_eq!(h.checked_by, "agent@h1");
        if round == 1 {
            // A second agent for the engine, from another host, while this one runs.
            let mut other = c.agent("other", &["--host", "h2"]);
            let code = other.exit(WAIT).await.expect("the second agent exits");
            assert_ne!(code, 0);
            let log = other.log();
            assert!(
                log.contains(&format!(
                    "engine {} is already run by an agent on host h1 (pid {pid}); stop that \
                     agent, or wait up to 5 s for its lease to lapse",
                    c.engine
                )),
                "{log}"
            );
            let e = c.engine_record().await.expect("the engine record");
            assert_eq!(
                e.agent.map(|a| a.host),
                Some("h1".into()),
                "not overwritten"
            );
        }
        a.signal(Signal::TERM);
        assert_eq!(a.exit(WAIT).await, Some(0), "{}", a.log());
    }
}

#[tokio::test]
async fn an_assignment_runs_and_its_removal_removes_the_container_and_the_report() {
    let c = Cluster::new().await;
    let _a = c.agent("a", &[]);
    let rev = c
        .assign(&c.req("web"), "service", &sleeper(json!({})))
        .await;
    let r = c
        .wait_report(&c.req("web"), |r| {
            running(r) && r.assignment_revision == rev
        })
        .await;
    assert!(r.error.is_empty(), "{r:?}");
    assert_eq!(r.engine, c.engine);
    let ids = c.containers_of(&c.req("web"));
    assert_eq!(ids, vec![r.container_id.clone()]);
    let info = inspect(&r.container_id).expect("the container");
    let labels = &info["Config"]["Labels"];
    assert_eq!(labels["citadel.request"], c.req("web").as_str());
    assert_eq!(labels["citadel.engine"], c.engine.as_str());
    assert_eq!(labels["citadel.cluster"], c.prefix.as_str());
    assert_eq!(info["State"]["Running"], true);

    c.unassign(&c.req("web")).await;
    wait_until("the container is removed", WAIT, || async {
        c.containers_of(&c.req("web")).is_empty()
    })
    .await;
    wait_until("the run report is deleted", WAIT, || async {
        c.report(&c.req("web")).await.is_none()
    })
    .await;
}

#[tokio::test]
async fn the_launch_policy_refuses_the_host_root_and_permits_a_declared_volume() {
    let c = Cluster::new().await;
    let _a = c.agent("a", &[]);
    let rev = c
        .assign(
            &c.req("escape"),
            "service",
            &sleeper(json!({"volumes": ["/:/host"]})),
        )
        .await;
    let r = c
        .wait_report(&c.req("escape"), |r| {
            r.failed() && r.assignment_revision == rev
        })
        .await;
    assert!(
        r.error.contains("host path /")
            && r.error
                .contains("is not allowed by the engine's launch policy"),
        "{r:?}"
    );
    assert!(r.container_id.is_empty(), "{r:?}");
    assert!(c.containers_of(&c.req("escape")).is_empty());

    // Another engine, whose agent declares a host volume: a bind of it runs.
    let vol = tempfile::tempdir().expect("tempdir");
    let path = vol.path().to_string_lossy().into_owned();
    let mut c2 = Cluster::new().await;
    c2.engine = format!("{}-v", c.engine);
    let _b = c2.agent("b", &["--host-volume", &path]);
    let spec = sleeper(json!({"volumes": [format!("{path}:/data")]}));
    let rev = c2.assign(&c2.req("bind"), "service", &spec).await;
    let r = c2
        .wait_report(&c2.req("bind"), |r| {
            r.assignment_revision == rev && (running(r) || r.failed())
        })
        .await;
    assert!(running(&r) && r.error.is_empty(), "{r:?}");
    // And a symlink inside it that leads out is refused, resolved.
    std::os::unix::fs::symlink("/", vol.path().join("up")).expect("symlink");
    let spec = sleeper(json!({"volumes": [format!("{path}/up:/data")]}));
    let rev = c2.assign(&c2.req("sneak"), "service", &spec).await;
    let r = c2
        .wait_report(&c2.req("sneak"), |r| {
            r.assignment_revision == rev && (running(r) || r.failed())
        })
        .await;
    assert!(r.error.contains("resolves to host path /,"), "{r:?}");
    assert!(c2.containers_of(&c2.req("sneak")).is_empty());
}

fn started_at(id: &str) -> String {
    inspect(id).expect("the container")["State"]["StartedAt"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_restarted_agent_adopts_its_running_container_and_its_lease() {
    let c = Cluster::new().await;
    let mut a = c.agent("a", &["--host", "h1"]);
    let rev = c
        .assign(&c.req("web"), "service", &sleeper(json!({})))
        .await;
    let r = c
        .wait_report(&c.req("web"), |r| {
            running(r) && r.assignment_revision == rev
        })
        .await;
    let (id, started) = (r.container_id.clone(), started_at(&r.container_id));
    let lease = c.health_lease().await.expect("health");
    a.signal(Signal::KILL);
    assert!(a.exit(WAIT).await.is_some());
    let b = c.agent("b", &["--host", "h1"]);
    let pid = b.pid();
    wait_until("the new agent holds the health key", WAIT, || async {
        c.health()
            .await
            .and_then(|h| h.agent)
            .is_some_and(|s| s.pid == pid)
    })
    .await;
    let now = c.health_lease().await.expect("health");
    assert_eq!(now, lease, "the predecessor's lease is adopted");
    // A few rounds of the new agent.
    b.wait_log("assignments listed").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(c.containers_of(&c.req("web")), vec![id.clone()]);
    assert_eq!(started_at(&id), started, "not restarted");
    let r = c.report(&c.req("web")).await.expect("the report");
    assert!(running(&r) && r.container_id == id, "{r:?}");
}

#[tokio::test]
async fn a_frozen_agent_past_its_ttl_stops_its_service_at_once_then_follows_the_assignments() {
    let c = Cluster::new().await;
    let a = c.agent("a", &[]);
    let rev = c
        .assign(&c.req("web"), "service", &sleeper(json!({})))
        .await;
    let batch = c
        .assign(&c.req("job"), "batch", &sleeper(json!({"type": "batch"})))
        .await;
    let r = c
        .wait_report(&c.req("web"), |r| {
            running(r) && r.assignment_revision == rev
        })
        .await;
    let job = c
        .wait_report(&c.req("job"), |r| {
            running(r) && r.assignment_revision == batch
        })
        .await;
    let id = r.container_id.clone();
    a.signal(Signal::STOP);
    // Past the 5 s TTL: the lease lapses.
    tokio::time::sleep(Duration::from_secs(7)).await;
    a.signal(Signal::CONT);
    wait_until("the service was stopped after the freeze", WAIT, || async {
        inspect(&id).is_some_and(|i| {
            i["State"]["FinishedAt"]
                .as_str()
                .is_some_and(|f| !f.starts_with("0001"))
        })
    })
    .await;
    a.wait_log("stopped: cut off from etcd").await;
    // The batch ran on throughout.
    let info = inspect(&job.container_id).expect("the batch container");
    assert!(
        info["State"]["FinishedAt"]
            .as_str()
            .is_some_and(|f| f.starts_with("0001")),
        "{}",
        info["State"]
    );
    // Still assigned: the same container runs again, and the health key is back on a lease.
    wait_until("the service runs again", WAIT, || async {
        inspect(&id).is_some_and(|i| i["State"]["Running"] == true)
    })
    .await;
    wait_until("the health key is back", WAIT, || async {
        c.health().await.is_some()
    })
    .await;
    // Moved away: removed.
    c.unassign(&c.req("web")).await;
    wait_until("the moved service is removed", WAIT, || async {
        c.containers_of(&c.req("web")).is_empty()
    })
    .await;
}

#[tokio::test]
async fn containers_of_another_engine_or_cluster_are_left_alone() {
    let c = Cluster::new().await;
    let img = image();
    let tag = format!("citadel.test={}", c.prefix);
    let run = |name: &str, engine: &str, cluster: &str| {
        docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            name,
            "--label",
            &tag,
            "--label",
            &format!("citadel.request={name}"),
            "--label",
            &format!("citadel.engine={engine}"),
            "--label",
            &format!("citadel.cluster={cluster}"),
            &img,
            "sleep",
            "600",
        ])
        .unwrap_or_else(|e| panic!("docker run {name}: {e}"))
    };
    let suffix = &c.prefix["/agent-test-".len()..];
    let other_engine = run(&format!("decoy-engine-{suffix}"), "elsewhere", &c.prefix);
    let other_cluster = run(
        &format!("decoy-cluster-{suffix}"),
        &c.engine,
        &format!("{}-other", c.prefix),
    );
    // Ours, but assigned nowhere: removed (the agent does act).
    let orphan = run(&format!("orphan-{suffix}"), &c.engine, &c.prefix);
    let _a = c.agent("a", &[]);
    let rev = c
        .assign(&c.req("web"), "service", &sleeper(json!({})))
        .await;
    c.wait_report(&c.req("web"), |r| {
        running(r) && r.assignment_revision == rev
    })
    .await;
    wait_until("the orphan is removed", WAIT, || async {
        inspect(&orphan).is_none()
    })
    .await;
    // Rounds after the orphan's removal: the decoys still run.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for id in [&other_engine, &other_cluster] {
        let info = inspect(id).expect("the decoy is still there");
        assert_eq!(info["State"]["Running"], true, "{id}");
    }
}
