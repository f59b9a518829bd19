//! Extra Docker daemons beside the system one (`citadel_testkit::dockerd`): several engines on one
//! machine, each running its own containers, and one of them lost while another carries on.
//!
//! Needs root and the system daemon (the test image is copied from it).

#![cfg(target_os = "linux")]

use std::collections::BTreeSet;
use std::path::Path;

use citadel_testkit::dockerd::DockerdProcess;
use common::{docker, docker_output};

mod common;

fn test_image() -> String {
    citadel_testkit::dockerd::test_image().unwrap_or_else(|e| panic!("{e}"))
}

/// What `docker info` says about an engine.
#[derive(Debug)]
struct Info {
    id: String,
    ncpu: u64,
    mem_total: u64,
}

async fn info(addr: Option<&str>) -> Info {
    let text = docker(
        addr,
        &["info", "--format", "{{.ID}} {{.NCPU}} {{.MemTotal}}"],
    )
    .await;
    let mut parts = text.split_whitespace();
    let mut next = |what: &str| {
        parts
            .next()
            .unwrap_or_else(|| panic!("no {what} in {text:?}"))
            .to_owned()
    };
    Info {
        id: next("ID"),
        ncpu: next("NCPU").parse().expect("NCPU is a number"),
        mem_total: next("MemTotal").parse().expect("MemTotal is a number"),
    }
}

/// Starts a `sleep` container without network and returns its full id.
async fn run_sleeper(addr: &str, image: &str) -> String {
    docker(
        Some(addr),
        &["run", "-d", "--network", "none", image, "sleep", "300"],
    )
    .await
}

/// The network interfaces a container sees with the given `docker run` network arguments.
async fn interfaces(addr: &str, image: &str, network: &[&str]) -> BTreeSet<String> {
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(network);
    args.extend([image, "ls", "/sys/class/net"]);
    docker(Some(addr), &args)
        .await
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// True when some mount of this process's namespace lies under `dir`.
fn has_mounts_under(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read mountinfo")
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|point| Path::new(point).starts_with(dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_extra_engines_run_containers_and_one_survives_the_others_loss() {
    let image = test_image();
    let (a, b) = tokio::join!(
        DockerdProcess::start("engine-a"),
        DockerdProcess::start("engine-b")
    );
    let mut a = a.expect("start engine-a");
    let b = b.expect("start engine-b");
    let (addr_a, addr_b) = (a.addr(), b.addr());
    assert_ne!(addr_a, addr_b);
    let (loaded_a, loaded_b) = tokio::join!(a.load_image(&image), b.load_image(&image));
    loaded_a.expect("load the test image into engine-a");
    loaded_b.expect("load the test image into engine-b");

    // Each is an engine of its own that sees the whole machine, like the system daemon.
    let system = info(None).await;
    let (info_a, info_b) = tokio::join!(info(Some(&addr_a)), info(Some(&addr_b)));
    for engine in [&info_a, &info_b] {
        assert!(engine.ncpu > 0 && engine.mem_total > 0, "{engine:?}");
        assert_eq!(engine.ncpu, system.ncpu, "{engine:?} vs {system:?}");
        assert_eq!(
            engine.mem_total, system.mem_total,
            "{engine:?} vs {system:?}"
        );
    }
    let ids: BTreeSet<&str> = [&system, &info_a, &info_b]
        .iter()
        .map(|i| i.id.as_str())
        .collect();
    assert_eq!(ids.len(), 3, "distinct engine IDs: {ids:?}");

    // A container on each; each engine lists only its own.
    let (on_a, on_b) = tokio::join!(run_sleeper(&addr_a, &image), run_sleeper(&addr_b, &image));
    for (addr, id) in [(&addr_a, &on_a), (&addr_b, &on_b)] {
        let state = docker(
            Some(addr),
            &[
                "inspect",
                "-f",
                "{{.State.Running}} {{.HostConfig.NetworkMode}}",
                id,
            ],
        )
        .await;
        assert_eq!(state, "true none");
        let listed = docker(Some(addr), &["ps", "-aq", "--no-trunc"]).await;
        assert_eq!(listed, *id, "only its own container on {addr}");
    }
    let on_system = docker(None, &["ps", "-aq", "--no-trunc"]).await;
    assert!(!on_system.contains(&on_a) && !on_system.contains(&on_b));

    // Lose engine-a: its socket stops answering, within a bounded time.
    a.kill().await;
    let lost = docker_output(Some(&addr_a), &["info"]).await;
    assert!(!lost.status.success(), "a killed engine still answers");
    let stderr = String::from_utf8_lossy(&lost.stderr);
    assert!(
        stderr.contains("Cannot connect to the Docker daemon"),
        "{stderr}"
    );

    // engine-b carries on: its container still runs and it starts new ones.
    let running = docker(
        Some(&addr_b),
        &["inspect", "-f", "{{.State.Running}}", &on_b],
    )
    .await;
    assert_eq!(running, "true");
    let echoed = docker(
        Some(&addr_b),
        &[
            "run",
            "--rm",
            "--network",
            "none",
            &image,
            "echo",
            "still here",
        ],
    )
    .await;
    assert_eq!(echoed, "still here");
    assert_eq!(info(Some(&addr_b)).await.id, info_b.id);

    // Dropping both removes their containers, processes, mounts and directories.
    let dirs = [a.data_root(), b.data_root()].map(|root| {
        root.parent()
            .expect("data root is inside the daemon's directory")
            .to_path_buf()
    });
    drop(a);
    drop(b);
    for dir in dirs {
        assert!(!dir.exists(), "{} removed", dir.display());
        assert!(!has_mounts_under(&dir), "{} unmounted", dir.display());
    }
}

/// Whether the system daemon runs a default bridge (it may be configured without one).
fn system_had_docker0() -> bool {
    std::process::Command::new("docker")
        .args(["network", "inspect", "bridge", "--format", "{{.Options}}"])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("docker0"))
        .unwrap_or(false)
}

#[tokio::test]
async fn a_bridgeless_engine_gives_loopback_only_unless_the_host_network_is_asked_for() {
    let image = test_image();
    let dockerd = DockerdProcess::start("netmodes")
        .await
        .expect("start dockerd");
    dockerd
        .load_image(&image)
        .await
        .expect("load the test image");
    let addr = dockerd.addr();

    let loopback_only = BTreeSet::from(["lo".to_owned()]);
    assert_eq!(
        interfaces(&addr, &image, &["--network", "none"]).await,
        loopback_only
    );
    // With `--bridge=none` the default network, and `bridge` by name, are loopback only too.
    assert_eq!(interfaces(&addr, &image, &[]).await, loopback_only);
    assert_eq!(
        interfaces(&addr, &image, &["--network", "bridge"]).await,
        loopback_only
    );

    // The daemon runs in a network namespace of its own: its "host" is loopback only too, and
    // the system daemon's bridge survives it.
    assert_eq!(
        interfaces(&addr, &image, &["--network", "host"]).await,
        loopback_only
    );
    assert!(
        std::path::Path::new("/sys/class/net/docker0").exists() || !system_had_docker0(),
        "the system daemon's docker0 bridge must survive an extra daemon"
    );

    // The host network leaves a netns mount behind even after a clean shutdown; drop sweeps it.
    let dir = dockerd
        .data_root()
        .parent()
        .expect("data root is inside the daemon's directory")
        .to_path_buf();
    drop(dockerd);
    assert!(!has_mounts_under(&dir));
    assert!(!dir.exists());
}
