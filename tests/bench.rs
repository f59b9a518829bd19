//! `citadel bench` runs end to end and reports what it promises. Speed is never asserted here:
//! this machine is shared; BENCHMARKS.md holds the figures.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_citadel");

#[test]
fn bench_runs_and_reports_every_field_with_intact_invariants() {
    let out = Command::new(BIN)
        .args([
            "bench",
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
            "--json",
        ])
        .output()
        .expect("run citadel bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().expect("a JSON line");
    let r: serde_json::Value = serde_json::from_str(last).expect("the last line is JSON");
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
