//! `citadel bench` runs end to end and reports what it promises. Speed is never asserted here:
//! this machine is shared; BENCHMARKS.md holds the figures.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_citadel");

/// Runs `citadel bench ARGS --json`; returns its stdout and the JSON of its last line.
fn bench(args: &[&str]) -> (String, serde_json::Value) {
    let (stdout, _, r) = bench_in(None, args);
    (stdout, r)
}

/// [`bench`] with its temporary files (its own etcd's) in `tmp` when given; also returns its
/// stderr.
fn bench_in(tmp: Option<&Path>, args: &[&str]) -> (String, String, serde_json::Value) {
    let mut cmd = Command::new(BIN);
    if let Some(tmp) = tmp {
        cmd.env("TMPDIR", tmp);
    }
    let out = cmd
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("run citadel bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "bench failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().expect("a JSON line");
    let r = serde_json::from_str(last).expect("the last line is JSON");
    (stdout, stderr, r)
}

#[test]
fn bench_runs_and_reports_every_field_with_intact_invariants() {
    let (stdout, r) = bench(&[
        "--engines",
        "20",
        "--requests",
        "400",
        "--clients",
        "8",
        "--submit-batch",
        "4",
        "--replicas",
        "1",
    ]);
    let last = r.to_string();
    for field in [
        "engines",
        "requests",
        "placed",
        "unschedulable",
        "placements_per_s",
        "raw_put_per_s",
        "ratio",
        "p50_ms",
        "put_p50_ms",
        "raw_put_p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
        "controller_cpu_s",
        "controller_rss_mb",
        "overcommitted_engines",
        "double_bound_ports",
    ] {
        assert!(r.get(field).is_some(), "missing {field} in {last}");
    }
    assert_eq!(r["engines"], 20);
    assert_eq!(r["requests"], 400);
    assert_eq!(r["undecided"], 0, "{last}");
    assert_eq!(r["duplicate_or_missing_decisions"], 0, "{last}");
    assert_eq!(r["overcommitted_engines"], 0, "{last}");
    assert_eq!(r["double_bound_ports"], 0, "{last}");
    assert_eq!(r["mismatched"], 0, "{last}");
    let placed = r["placed"].as_u64().unwrap_or(0);
    let refused = r["unschedulable"].as_u64().unwrap_or(0) + r["invalid"].as_u64().unwrap_or(0);
    assert_eq!(placed + refused, 400, "every request decided once: {last}");
    assert!(placed > 0, "{last}");
    for field in ["put_p50_ms", "raw_put_p50_ms"] {
        let ms = r[field].as_f64().unwrap_or(0.0);
        assert!(ms > 0.0 && ms.is_finite(), "{field} is a time: {last}");
    }
    assert!(
        stdout.contains("placements/s"),
        "the human table comes first:\n{stdout}"
    );
}

/// `--baseline floor` measures the contract's floor in the same run and reports citadel's rate
/// over it; the floor writes under its own prefix and leaves the run's invariants alone.
#[test]
fn bench_with_the_floor_reports_the_ratio_to_it() {
    let (stdout, r) = bench(&[
        "--engines",
        "10",
        "--requests",
        "200",
        "--clients",
        "4",
        "--replicas",
        "1",
        "--baseline",
        "floor",
    ]);
    let last = r.to_string();
    let floor = r["floor_per_s"].as_f64().expect("floor_per_s");
    let ratio = r["ratio_to_floor"].as_f64().expect("ratio_to_floor");
    let placements = r["placements_per_s"].as_f64().unwrap_or(0.0);
    assert!(floor > 0.0 && floor.is_finite(), "{last}");
    assert!(
        (ratio - placements / floor).abs() < 1e-6 * ratio.max(1.0),
        "ratio_to_floor is placements_per_s over floor_per_s: {last}"
    );
    assert_eq!(r["overcommitted_engines"], 0, "{last}");
    assert_eq!(r["undecided"], 0, "{last}");
    assert!(
        stdout.contains("floor"),
        "the human table names the floor:\n{stdout}"
    );
}

/// `--headroom 0.3` sizes the engines below the demand: most requests are refused, every one is
/// decided once, and the per-decision figures and etcd's database size are reported.
#[test]
fn bench_with_little_headroom_saturates_and_reports_per_decision_figures() {
    let (stdout, r) = bench(&[
        "--engines",
        "10",
        "--requests",
        "400",
        "--clients",
        "4",
        "--headroom",
        "0.3",
        "--quiet-progress",
    ]);
    let last = r.to_string();
    assert_eq!(r["headroom"], 0.3, "{last}");
    let placed = r["placed"].as_u64().unwrap_or(0);
    let refused = r["unschedulable"].as_u64().unwrap_or(0);
    assert_eq!(placed + refused, 400, "every request decided once: {last}");
    assert!(placed > 0 && refused > placed, "a saturated run: {last}");
    assert_eq!(r["overcommitted_engines"], 0, "{last}");
    assert_eq!(r["mismatched"], 0, "{last}");
    for field in [
        "controller_cpu_us_per_decision",
        "controller_bytes_per_decision",
        "etcd_db_mb",
    ] {
        let v = r[field].as_f64().unwrap_or(-1.0);
        assert!(v >= 0.0 && v.is_finite(), "{field}: {last}");
    }
    assert!(r["etcd_history_compacted"].is_boolean(), "{last}");
    assert!(
        stdout.contains("headroom 0.3"),
        "the parameters line says it:\n{stdout}"
    );
}

/// `--agents 50 --launch`: hollow agents register the engines and keep their leases; the
/// requests are decided twice, the second batch with `"launch": true`, and every placed launched
/// request gets a `running` report from the agent of the engine it is placed on. A killed
/// agent's health key goes with its lease.
#[test]
fn bench_with_hollow_agents_launches_on_the_agent_of_the_engine() {
    let (stdout, r) = bench(&[
        "--agents",
        "50",
        "--requests",
        "300",
        "--clients",
        "8",
        "--launch",
        "--agent-ttl",
        "3",
        "--quiet-window",
        "2",
        "--quiet-progress",
    ]);
    let last = r.to_string();
    assert_eq!(r["engines"], 50, "{last}");
    assert_eq!(r["undecided"], 0, "{last}");
    assert_eq!(r["overcommitted_engines"], 0, "{last}");
    assert_eq!(r["double_bound_ports"], 0, "{last}");
    assert_eq!(r["mismatched"], 0, "{last}");
    let a = &r["agents"];
    assert_eq!(a["agents"], 50, "{last}");
    assert!(
        a["live_leases"].as_u64().unwrap_or(0) >= 50,
        "every agent's lease is alive in the quiet window: {last}"
    );
    assert!(
        a["keepalives_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{last}"
    );
    assert_eq!(a["lost_leases"], 0, "{last}");
    let l = &a["launch"];
    assert_eq!(l["requests"], 300, "{last}");
    let placed = l["placed"].as_u64().unwrap_or(0);
    assert!(placed > 0, "{last}");
    assert_eq!(
        l["running"].as_u64(),
        Some(placed),
        "every placed launched request runs on its engine's agent: {last}"
    );
    assert_eq!(l["missing_running"], 0, "{last}");
    assert_eq!(l["misplaced_running"], 0, "{last}");
    for field in [
        "overcommitted_engines",
        "double_bound_ports",
        "mismatched",
        "assigned_twice",
        "duplicate_or_missing_decisions",
    ] {
        assert_eq!(l[field], 0, "{field} over both batches: {last}");
    }
    let p99 = l["running_p99_ms"].as_f64().unwrap_or(0.0);
    assert!(p99 > 0.0 && p99.is_finite(), "{last}");
    let ratio = l["ratio"].as_f64().unwrap_or(0.0);
    assert!(ratio > 0.0 && ratio.is_finite(), "{last}");
    let loss = &a["loss"];
    assert!(
        loss["health_deleted_ms"].as_f64().is_some(),
        "the killed agent's health key goes with its lease: {last}"
    );
    assert!(
        stdout.contains("hollow agents") && stdout.contains("put -> running"),
        "the table has the agents' lines:\n{stdout}"
    );
}

/// `--scenario preemption`: engines filled with low-priority requests, then as many
/// high-priority ones as the engines hold: each is placed by evicting one low request, every
/// victim ends `preempted` by a placement that lists it, and nothing is overcommitted.
#[test]
fn bench_preemption_scenario_places_every_high_request_by_evicting_one_low() {
    let (stdout, r) = bench(&[
        "--scenario",
        "preemption",
        "--engines",
        "20",
        "--requests",
        "40",
        "--clients",
        "8",
        "--timeout",
        "45",
        "--quiet-progress",
    ]);
    let last = r.to_string();
    assert_eq!(r["scenario"], "preemption", "{last}");
    assert_eq!(r["low_requests"], 80, "four per engine: {last}");
    assert_eq!(r["high_placed"], 40, "{last}");
    assert_eq!(r["undecided"], 0, "{last}");
    assert_eq!(r["preempted"], 40, "one victim per high request: {last}");
    assert_eq!(r["preemptions_listed"], 40, "{last}");
    assert_eq!(r["victims_undecided"], 0, "{last}");
    assert_eq!(r["victims_unaccounted"], 0, "{last}");
    invariants_intact(&r);
    let ratio = r["ratio"].as_f64().unwrap_or(0.0);
    assert!(ratio > 0.0 && ratio.is_finite(), "{last}");
    assert!(
        stdout.contains("scenario preemption") && stdout.contains("victims"),
        "the table names the scenario:\n{stdout}"
    );
}

/// `--scenario gang`: gangs of 8 with their members' puts interleaved; every gang is placed
/// whole, none in part, and the latency is one per gang.
#[test]
fn bench_gang_scenario_places_every_gang_whole() {
    let (stdout, r) = bench(&[
        "--scenario",
        "gang",
        "--engines",
        "20",
        "--requests",
        "80",
        "--clients",
        "8",
        "--timeout",
        "45",
        "--quiet-progress",
    ]);
    let last = r.to_string();
    assert_eq!(r["scenario"], "gang", "{last}");
    assert_eq!(r["gang_size"], 8, "{last}");
    assert_eq!(r["gangs"], 10, "{last}");
    assert_eq!(r["gangs_partial"], 0, "all or nothing: {last}");
    assert_eq!(r["gangs_whole"], 10, "the engines hold them all: {last}");
    assert_eq!(r["placed"], 80, "{last}");
    assert_eq!(r["undecided"], 0, "{last}");
    invariants_intact(&r);
    let p99 = r["p99_ms"].as_f64().unwrap_or(-1.0);
    assert!(p99 >= 0.0 && p99.is_finite(), "{last}");
    assert!(
        stdout.contains("scenario gang") && stdout.contains("partial 0"),
        "the table names the scenario:\n{stdout}"
    );
}

/// A gang run needs whole gangs: requests that do not divide into them are refused up front.
#[test]
fn bench_gang_scenario_refuses_requests_that_are_not_whole_gangs() {
    let out = Command::new(BIN)
        .args([
            "bench",
            "--scenario",
            "gang",
            "--engines",
            "2",
            "--requests",
            "10",
        ])
        .output()
        .expect("run citadel bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("multiple of --gang-size"), "{stderr}");
}

/// `--etcd-members 3 --at-load 0.5`: the bench's own etcd is a cluster of three (its member list
/// says so, and the run talks to every member), the requests are decided again at half the
/// full-speed run's placements/s on a fresh prefix, every request is decided with the invariants
/// intact in both, and no member of the cluster outlives the run.
#[test]
fn bench_on_a_three_member_etcd_at_half_load_decides_both_and_leaves_no_etcd() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let (stdout, stderr, r) = bench_in(
        Some(tmp.path()),
        &[
            "--engines",
            "40",
            "--requests",
            "600",
            "--etcd-members",
            "3",
            "--at-load",
            "0.5",
            "--baseline",
            "floor",
            "--quiet-progress",
        ],
    );
    let last = r.to_string();
    assert_eq!(r["etcd_members"], 3, "{last}");
    let endpoints = stderr
        .lines()
        .find_map(|l| l.strip_prefix("bench: etcd "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("the endpoints line:\n{stderr}"));
    assert_eq!(
        endpoints.split(',').count(),
        3,
        "the run is given every member: {endpoints}"
    );
    invariants_intact(&r);
    assert_eq!(r["undecided"], 0, "{last}");
    let decided: u64 = ["placed", "unschedulable", "invalid"]
        .iter()
        .map(|f| r[f].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(decided, 600, "every request decided once: {last}");
    let ms = |v: &serde_json::Value, f: &str| {
        v[f].as_f64()
            .unwrap_or_else(|| panic!("{f} is a number: {last}"))
    };
    assert!(ms(&r, "p999_ms") >= ms(&r, "p99_ms"), "{last}");

    let levels = r["at_load"].as_array().expect("at_load is a list");
    assert_eq!(levels.len(), 1, "{last}");
    let level = &levels[0];
    assert_eq!(level["fraction"], 0.5, "{last}");
    // As computed, up to the last digit serde_json's float parsing may round differently.
    let half = 0.5 * ms(&r, "placements_per_s");
    assert!(
        half > 0.0 && (ms(level, "offered_per_s") - half).abs() <= 1e-12 * half,
        "half the full-speed run's placements/s: {last}"
    );
    assert_eq!(level["decided"], 600, "{last}");
    assert_eq!(level["undecided"], 0, "{last}");
    invariants_intact(level);
    assert!(ms(level, "p999_ms") >= ms(level, "p99_ms"), "{last}");
    assert!(
        stdout.contains("3-member etcd") && stdout.contains("at load 0.5"),
        "the table says both:\n{stdout}"
    );

    // Every member ran with its data under `tmp`: none may still run, nor leave its data.
    let tmp_path = tmp.path().to_string_lossy().into_owned();
    let survivors: Vec<String> = std::fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&tmp_path))
        .collect();
    assert!(survivors.is_empty(), "still running: {survivors:?}");
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("read the temporary directory")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The invariants a run's JSON reports are intact.
fn invariants_intact(r: &serde_json::Value) {
    for field in [
        "overcommitted_engines",
        "double_bound_ports",
        "mismatched",
        "duplicate_or_missing_decisions",
    ] {
        assert_eq!(r[field], 0, "{field}: {r}");
    }
}
