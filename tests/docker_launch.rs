//! Against this machine's real Docker engine: launching, finding, stopping and sampling the
//! containers of placed requests (`citadel::docker`).
//!
//! There is no registry here: the image is built locally by `scripts/test-image.sh`. Each test
//! uses its own request id, so they run in parallel, and a [`Cleanup`] guard removes whatever
//! carries that id when the test ends, passed or failed.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use bollard::Docker;
use citadel::docker::engine;
use citadel::docker::{
    self, Action, Binding, DockerError, ENGINE_LABEL, LaunchSpec, Owner, REQUEST_LABEL, State,
};
use citadel::model::{Image, Port};
use futures_util::StreamExt;
use serde_json::{Value, json};

const SOCKET: &str = "unix:///var/run/docker.sock";
const ENGINE: &str = "local";

/// Whose containers [`spec`] makes: engine [`ENGINE`], no cluster label.
fn owner() -> Owner {
    Owner::new(ENGINE, None)
}

/// The local test image, built once per test binary.
fn test_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| citadel_testkit::dockerd::test_image().unwrap_or_else(|e| panic!("{e}")))
}

fn connect() -> Docker {
    engine::connect(SOCKET, None, Duration::from_secs(30)).expect("connect to the local engine")
}

/// Runs the docker CLI; its stdout, or `Err(stderr)`.
fn cli(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// The ids of every container labelled with `request`, as the docker CLI lists them.
fn containers_of(request: &str) -> Vec<String> {
    let filter = format!("label={REQUEST_LABEL}={request}");
    cli(&["ps", "-aq", "--no-trunc", "--filter", &filter])
        .expect("docker ps")
        .lines()
        .map(str::to_string)
        .collect()
}

fn docker_inspect(id: &str) -> Value {
    let text = cli(&["inspect", id]).expect("docker inspect");
    let mut all: Vec<Value> = serde_json::from_str(&text).expect("docker inspect prints JSON");
    assert_eq!(all.len(), 1, "{text}");
    all.remove(0)
}

/// A unique request id whose containers are removed (`docker rm -f`) when the test ends.
struct Cleanup {
    request: String,
}

impl Cleanup {
    fn new() -> Self {
        Self {
            request: format!("test-{}", uuid::Uuid::new_v4()),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label={REQUEST_LABEL}={}", self.request);
        let Ok(ids) = cli(&["ps", "-aq", "--filter", &filter]) else {
            return;
        };
        let ids: Vec<&str> = ids.lines().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            if let Err(e) = cli(&args) {
                eprintln!("cleanup of {}: {e}", self.request);
            }
        }
    }
}

/// The test image running `args` (the image's entrypoint is none: `args` is the command).
///
/// Without a network (loopback only): only the port test needs Docker's bridge, and `docker0`
/// can go missing on this machine (an extra `dockerd --bridge=none` in the same network
/// namespace deletes it when it starts), which should fail that one test, not all of them.
fn image_running(args: &[&str]) -> Image {
    Image {
        name: test_image().to_string(),
        args: args.iter().map(|a| a.to_string()).collect(),
        kind: "service".into(),
        network_mode: "none".into(),
        ..Image::default()
    }
}

fn spec(request: &str, image: &Image) -> LaunchSpec {
    LaunchSpec::from_image(request, ENGINE, image, 100, 32)
}

async fn launch(docker: &Docker, spec: &LaunchSpec) -> docker::Running {
    docker::launch(docker, spec)
        .await
        .unwrap_or_else(|e| panic!("launch {}: {e}", spec.request_id))
}

fn free_loopback_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

#[tokio::test]
async fn launch_sets_limits_ports_and_only_the_citadel_labels() {
    let docker = connect();
    let guard = Cleanup::new();
    let port = free_loopback_port();
    let image = Image {
        environment: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
        // Scheduling constraints: they must not become container labels.
        labels: vec!["zone==a".into()],
        bind_ports: vec![Port {
            proto: "tcp".into(),
            host_ip: "127.0.0.1".into(),
            port: i64::from(port),
            container_port: 8080,
        }],
        // Docker's default network, the bridge: the only one that publishes ports.
        network_mode: String::new(),
        ..image_running(&["sleep", "300"])
    };
    let spec = LaunchSpec::from_image(&guard.request, ENGINE, &image, 500, 64);

    let running = launch(&docker, &spec).await;

    assert_eq!(running.state, State::Running);
    assert_eq!(running.request_id, guard.request);
    assert_eq!(running.engine_id.as_deref(), Some(ENGINE));
    assert_eq!(running.image, test_image());
    let wanted = Binding {
        container_port: 8080,
        proto: "tcp".into(),
        host_ip: "127.0.0.1".into(),
        host_port: port,
    };
    assert_eq!(running.ports, vec![wanted]);

    let c = docker_inspect(&running.id);
    assert_eq!(c["HostConfig"]["NanoCpus"], json!(500_000_000));
    assert_eq!(c["HostConfig"]["Memory"], json!(64 * 1024 * 1024));
    assert_eq!(
        c["HostConfig"]["PortBindings"],
        json!({"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": port.to_string()}]})
    );
    assert_eq!(
        c["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"],
        json!(port.to_string())
    );
    assert_eq!(
        c["Config"]["Labels"],
        json!({REQUEST_LABEL: guard.request, ENGINE_LABEL: ENGINE})
    );
    assert!(c["Config"]["ExposedPorts"].get("8080/tcp").is_some(), "{c}");
    let env = c["Config"]["Env"].as_array().cloned().unwrap_or_default();
    assert!(env.contains(&json!("GREETING=hi")), "{env:?}");
}

#[tokio::test]
async fn launching_twice_returns_the_same_container() {
    let docker = connect();
    let guard = Cleanup::new();
    let spec = spec(&guard.request, &image_running(&["sleep", "300"]));

    let first = launch(&docker, &spec).await;
    let second = launch(&docker, &spec).await;

    assert_eq!(first.id, second.id);
    assert_eq!(second.state, State::Running);
    assert_eq!(containers_of(&guard.request), vec![first.id]);
}

#[tokio::test]
async fn a_container_created_but_not_started_is_started_not_twinned() {
    let docker = connect();
    let guard = Cleanup::new();
    // What a leader that crashed between create and start leaves behind, labelled as it
    // labels its containers (one labelled for another engine would not be adopted).
    let label = format!("{REQUEST_LABEL}={}", guard.request);
    let engine = format!("{ENGINE_LABEL}={ENGINE}");
    let created = cli(&[
        "create",
        "--network",
        "none",
        "--label",
        &label,
        "--label",
        &engine,
        test_image(),
        "sleep",
        "300",
    ])
    .expect("docker create");

    let running = launch(
        &docker,
        &spec(&guard.request, &image_running(&["sleep", "300"])),
    )
    .await;

    assert_eq!(running.id, created);
    assert_eq!(running.state, State::Running);
    assert_eq!(containers_of(&guard.request), vec![created]);
}

#[tokio::test]
async fn a_bad_entrypoint_is_a_start_error_and_leaves_no_container() {
    let docker = connect();
    let guard = Cleanup::new();
    let image = Image {
        entrypoint: vec!["/nonexistent".into()],
        ..image_running(&[])
    };

    let err = docker::launch(&docker, &spec(&guard.request, &image))
        .await
        .expect_err("there is no /nonexistent to run");

    let DockerError::Start { message } = &err else {
        panic!("expected a start error, got {err:?}");
    };
    assert!(message.contains("/nonexistent"), "{message}");
    assert!(message.contains("no such file"), "{message}");
    assert_eq!(containers_of(&guard.request), Vec::<String>::new());
    assert_eq!(
        docker::find(&docker, &owner(), &guard.request)
            .await
            .expect("find"),
        None
    );
}

#[tokio::test]
async fn a_missing_image_is_a_pull_error_within_a_bound() {
    let docker = connect();
    let guard = Cleanup::new();
    let image = Image {
        name: "citadel-test/absent:1".into(),
        ..image_running(&[])
    };
    let mut spec = spec(&guard.request, &image);
    spec.pull_timeout = Duration::from_secs(20);

    let started = Instant::now();
    let err = docker::launch(&docker, &spec)
        .await
        .expect_err("no registry has that image");

    assert!(started.elapsed() < Duration::from_secs(30), "{err}");
    let DockerError::Pull { image, message } = &err else {
        panic!("expected a pull error, got {err:?}");
    };
    assert_eq!(image, "citadel-test/absent:1");
    assert!(!message.is_empty());
    assert!(err.to_string().contains("citadel-test/absent:1"), "{err}");
    assert_eq!(containers_of(&guard.request), Vec::<String>::new());
}

#[tokio::test]
async fn a_batch_exit_code_reaches_the_event_stream_and_find() {
    let docker = connect();
    let guard = Cleanup::new();
    let image = Image {
        entrypoint: vec!["sh".into(), "-c".into(), "exit 3".into()],
        kind: "batch".into(),
        ..image_running(&[])
    };
    let spec = spec(&guard.request, &image);
    // Replayed from before the launch: the container may die before a live stream subscribes.
    let before = SystemTime::now() - Duration::from_secs(1);
    let mut events = Box::pin(docker::events_since(&docker, Some(before)));

    let launched = launch(&docker, &spec).await;

    let died = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = events.next().await {
            let event = event.expect("event stream");
            if event.request_id == guard.request && event.action == Action::Die {
                return event;
            }
        }
        panic!("the event stream ended");
    })
    .await
    .expect("a die event within 30s");
    assert_eq!(died.container_id, launched.id);
    assert_eq!(died.exit_code, Some(3));
    assert_eq!(died.engine_id.as_deref(), Some(ENGINE));

    let found = docker::find(&docker, &owner(), &guard.request)
        .await
        .expect("find")
        .expect("the exited container is still there");
    assert_eq!(found.id, launched.id);
    assert_eq!(found.state, State::Exited);
    assert_eq!(found.exit_code, Some(3));

    // A finished batch is not run again.
    let again = launch(&docker, &spec).await;
    assert_eq!(again.id, launched.id);
    assert_eq!(again.state, State::Exited);
}

#[tokio::test]
async fn stop_and_remove_removes_every_container_of_the_request_on_its_engine_only() {
    let docker = connect();
    let guard = Cleanup::new();
    let launched = launch(
        &docker,
        &spec(&guard.request, &image_running(&["sleep", "300"])),
    )
    .await;
    // A twin, as two racing launchers could leave, and a container of this request labelled
    // for another engine (a second record naming this daemon), which is not ours to touch.
    let label = format!("{REQUEST_LABEL}={}", guard.request);
    let run_labelled = |engine: &str| {
        let engine = format!("{ENGINE_LABEL}={engine}");
        cli(&[
            "run",
            "-d",
            "--network",
            "none",
            "--label",
            &label,
            "--label",
            &engine,
            test_image(),
            "sleep",
            "300",
        ])
        .expect("docker run")
    };
    let twin = run_labelled(ENGINE);
    let stranger = run_labelled("elsewhere");

    let managed = docker::list_managed(&docker, &owner())
        .await
        .expect("list managed");
    let mut ours: Vec<&str> = managed
        .iter()
        .filter(|r| r.request_id == guard.request)
        .map(|r| r.id.as_str())
        .collect();
    ours.sort();
    let mut both = vec![launched.id.as_str(), twin.as_str()];
    both.sort();
    assert_eq!(ours, both);

    let removed =
        docker::stop_and_remove(&docker, &owner(), &guard.request, Duration::from_secs(1))
            .await
            .expect("stop and remove");

    assert!(removed);
    assert_eq!(containers_of(&guard.request), vec![stranger]);
    assert_eq!(
        docker::find(&docker, &owner(), &guard.request)
            .await
            .expect("find"),
        None
    );
    let again = docker::stop_and_remove(&docker, &owner(), &guard.request, Duration::from_secs(1))
        .await
        .expect("stop and remove, again");
    assert!(!again, "nothing was left to remove");
}

#[tokio::test]
async fn usage_counts_a_running_container_and_its_memory() {
    let docker = connect();
    let guard = Cleanup::new();
    let launched = launch(
        &docker,
        &spec(&guard.request, &image_running(&["sleep", "300"])),
    )
    .await;

    let usage = docker::usage(&docker).await.expect("usage");

    assert!(usage.running >= 1, "{usage:?}");
    let sample = usage
        .samples
        .iter()
        .find(|s| s.request_id.as_deref() == Some(guard.request.as_str()))
        .unwrap_or_else(|| panic!("no sample for {}: {usage:?}", guard.request));
    assert_eq!(sample.container_id, launched.id);
    assert_eq!(sample.image, test_image());
    assert!(sample.memory_mb > 0.0, "{sample:?}");
    assert!(
        sample.memory_mb < 32.0,
        "within its 32 MB limit: {sample:?}"
    );
    assert!(sample.cpus >= 0.0 && sample.cpus.is_finite(), "{sample:?}");
    assert!(usage.memory_mb >= sample.memory_mb, "{usage:?}");
}

#[tokio::test]
async fn usage_measures_a_busy_container_at_its_cpu_limit() {
    let docker = connect();
    let guard = Cleanup::new();
    let image = Image {
        entrypoint: vec!["sh".into(), "-c".into(), "while :; do :; done".into()],
        ..image_running(&[])
    };
    // Half a cpu: the engine's quota holds the loop to it, whatever the machine's size.
    let spec = LaunchSpec::from_image(&guard.request, ENGINE, &image, 500, 32);
    launch(&docker, &spec).await;

    let usage = docker::usage(&docker).await.expect("usage");

    let sample = usage
        .samples
        .iter()
        .find(|s| s.request_id.as_deref() == Some(guard.request.as_str()))
        .unwrap_or_else(|| panic!("no sample for {}: {usage:?}", guard.request));
    assert!(
        (0.25..=0.75).contains(&sample.cpus),
        "a spinning loop capped at 0.5 cpu: {sample:?}"
    );
    assert!(usage.cpus >= sample.cpus, "{usage:?}");
}
