//! Against this machine's real Docker engine: probing what an engine offers.

use std::time::{Duration, Instant};

use citadel::docker::engine;
use common::docker_info;

mod common;

const SOCKET: &str = "unix:///var/run/docker.sock";

#[tokio::test]
async fn probe_reads_ncpu_and_memtotal_from_the_engine() {
    let (ncpu, mem_mb) = docker_info();
    let p = engine::probe(SOCKET, None, Duration::from_secs(5))
        .await
        .expect("probe the local engine");
    assert_eq!(p.cpus, ncpu);
    assert_eq!(p.memory_mb, mem_mb);
    assert!(!p.server_version.is_empty());
}

#[tokio::test]
async fn an_unreachable_engine_is_a_clear_error_not_a_hang() {
    let started = Instant::now();
    // Nothing listens on port 1 of the loopback address.
    let err = engine::probe("tcp://127.0.0.1:1", None, Duration::from_secs(2))
        .await
        .expect_err("nothing listens there");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded: {err}"
    );
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
    let err = engine::probe("unix:///nonexistent.sock", None, Duration::from_secs(2))
        .await
        .expect_err("no such socket");
    assert!(err.to_string().contains("nonexistent"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_add_without_sizes_probes_and_flags_override() {
    let etcd = common::start_etcd().await;
    let ep = etcd.endpoint();
    let client = common::connect(&etcd).await;
    let (ncpu, mem_mb) = docker_info();
    let cli = |args: &[&str]| common::cli(&ep, args);

    // Registers `local` with these extra flags and returns what landed in etcd.
    let add_local = async |extra: &[&str]| {
        let mut args = vec!["engine", "add", "local", "--addr", SOCKET];
        args.extend_from_slice(extra);
        let (code, _, stderr) = cli(&args);
        assert_eq!(code, 0, "{stderr}");
        common::get_json(&client, "/citadel/engines/local")
            .await
            .expect("engine key")
    };

    let e = add_local(&["--label", "zone=a"]).await;
    assert_eq!(e["cpus"].as_f64(), Some(ncpu), "{e}");
    assert_eq!(e["memory"].as_f64(), Some(mem_mb), "{e}");
    assert_eq!(e["addr"], SOCKET);
    assert!(
        e["labels"]
            .as_array()
            .is_some_and(|l| l.contains(&"zone=a".into())),
        "{e}"
    );

    let e = add_local(&["--cpus", "0.5", "--replace"]).await;
    assert_eq!(e["cpus"].as_f64(), Some(0.5), "the flag wins: {e}");
    assert_eq!(
        e["memory"].as_f64(),
        Some(mem_mb),
        "memory still probed: {e}"
    );

    let (code, _, stderr) = cli(&[
        "engine",
        "add",
        "gone",
        "--addr",
        "tcp://127.0.0.1:1",
        "--probe-timeout",
        "2",
    ]);
    assert_eq!(code, 1);
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
    assert!(stderr.contains("cannot reach the engine"), "{stderr}");
    assert!(
        common::get_json(&client, "/citadel/engines/gone")
            .await
            .is_none()
    );
}

/// A runner whose writes etcd refuses for their fence (another replica leads) stops, so that
/// its replica steps down instead of carrying on as if it led.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_whose_fence_is_refused_stops() {
    let etcd = common::start_etcd().await;
    let client = common::connect(&etcd).await;
    let keys = common::keys();
    let engine = serde_json::json!({"addr": SOCKET, "cpus": 1, "memory": 256});
    let rev = common::put_engine_json(&client, &keys, "local", &engine).await;
    let (cache, books) = citadel::cache::Cache::with_listener(
        keys.clone(),
        1.0,
        citadel::manager::Ledger::default(),
    );
    cache.load(&client).await.expect("load");
    // A fence on a campaign key that does not exist: every write it guards is refused.
    let fence = citadel::store::fence::Fence {
        key: format!("{}/nobody", keys.leader()).into_bytes(),
        rev,
    };
    let runner = citadel::runner::Runner::new(
        client.clone(),
        cache,
        books,
        fence,
        citadel::runner::RunnerConfig {
            replica: "deposed".into(),
            health_every: Duration::from_millis(200),
            ..Default::default()
        },
    );
    tokio::time::timeout(common::WAIT, runner.run())
        .await
        .expect("the runner stops once its fence is refused");
    assert!(
        common::get(&client, &keys.health(&common::eid("local")))
            .await
            .is_none(),
        "nothing it wrote landed"
    );
}
