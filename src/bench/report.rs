//! What a run prints: the table, and the plot of latencies (`--plot`).

use std::fmt::Write as _;
use std::path::Path;

use super::BenchResult;

/// The human table (no trailing newline). Writing to a String cannot fail.
pub fn render_table(r: &BenchResult) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "citadel bench: {}", r.parameters());
    match &r.scenario {
        None => {
            let _ = writeln!(
                out,
                "  decided            {:>10}  (placed {}, unschedulable {}, invalid {}, undecided {})",
                r.requests - r.undecided,
                r.placed,
                r.unschedulable,
                r.invalid,
                r.undecided
            );
        }
        Some(s) => scenario_table(&mut out, r, s),
    }
    let _ = writeln!(out, "  placements/s       {:>10.0}", r.placements_per_s);
    let _ = writeln!(
        out,
        "  raw etcd puts/s    {:>10.0}  (same etcd, same concurrency)",
        r.raw_put_per_s
    );
    let _ = writeln!(out, "  ratio              {:>10.3}", r.ratio);
    if let (Some(floor), Some(to_floor)) = (r.floor_per_s, r.ratio_to_floor) {
        let _ = writeln!(
            out,
            "  floor/s            {floor:>10.0}  (a minimal writer of the same decisions, with the same guards)"
        );
        let _ = writeln!(out, "  ratio to the floor {to_floor:>10.3}");
    }
    let _ = writeln!(
        out,
        "  users' put ms      {:>10.2}  p50 while citadel runs ({:.2} in the raw measurement)",
        r.put_p50_ms, r.raw_put_p50_ms
    );
    let _ = writeln!(
        out,
        "  latency ms         {:>10}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
        "", r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms
    );
    for l in &r.at_load {
        let _ = writeln!(
            out,
            "  {:<18} {:>10.0}/s offered: {:.0} placements/s, decided {} (undecided {}); latency ms p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}; invariant violations {}",
            format!("at load {}", l.fraction),
            l.offered_per_s,
            l.placements_per_s,
            l.decided,
            l.undecided,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.p999_ms,
            l.max_ms,
            l.violations()
        );
    }
    let _ = writeln!(
        out,
        "  controller cpu     {:>10.2} s  ({:.1} us per placement, {:.1} us per decision)",
        r.controller_cpu_s, r.controller_cpu_us_per_placement, r.controller_cpu_us_per_decision
    );
    let _ = writeln!(
        out,
        "  controller rss     {:>10.1} MB peak  ({:.1} MB at start, {:.0} B per placement, {:.0} B per decision)",
        r.controller_rss_mb,
        r.controller_rss_base_mb,
        r.controller_bytes_per_placement,
        r.controller_bytes_per_decision
    );
    if let (Some(raw), Some(run)) = (r.etcd_cpu_s_per_1k_raw_puts, r.etcd_cpu_s_per_1k_placements) {
        let _ = writeln!(
            out,
            "  etcd cpu           {raw:>10.3} s per 1k raw puts, {run:.3} s per 1k placements"
        );
    }
    let _ = writeln!(
        out,
        "  bench cpu          {:>10.2} s  (submitters and decision watcher): {:.3} s per 1k raw puts, {:.3} s per 1k placements",
        r.bench_cpu_s, r.bench_cpu_s_per_1k_raw_puts, r.bench_cpu_s_per_1k_placements
    );
    let _ = writeln!(
        out,
        "  invariants         overcommitted engines {}, double-bound ports {}, mismatched {}, missing/duplicate decisions {}",
        r.overcommitted_engines,
        r.double_bound_ports,
        r.mismatched,
        r.duplicate_or_missing_decisions
    );
    if let Some(db) = r.etcd_db_mb {
        let in_use = r
            .etcd_db_in_use_mb
            .map(|u| format!(", {u:.0} MB in use"))
            .unwrap_or_default();
        let compacted = match r.etcd_history_compacted {
            Some(true) => "; history compacted during the run",
            Some(false) => "; history not compacted",
            None => "",
        };
        let _ = writeln!(out, "  etcd database      {db:>10.0} MB{in_use}{compacted}");
    }
    if let Some(a) = &r.agents {
        agents_table(&mut out, a);
    }
    let _ = writeln!(out, "  wall time          {:>10.1} s", r.elapsed_s);
    out.trim_end().to_string()
}

/// The `--scenario` lines: what was measured, and what the scenario promises.
fn scenario_table(out: &mut String, r: &BenchResult, s: &super::ScenarioFigures) {
    let _ = writeln!(
        out,
        "  decided            {:>10}  of the measured phase (undecided {}); in etcd at the end: placed {}, unschedulable {}, invalid {}",
        r.requests - r.undecided,
        r.undecided,
        r.placed,
        r.unschedulable,
        r.invalid
    );
    if let Some(p) = &s.preemption {
        let _ = writeln!(
            out,
            "  preemption         {:>10}  high-priority placed of {}, after {} low-priority ones filled every engine ({:.1} s, not measured)",
            p.high_placed, r.requests, p.low_requests, p.fill_s
        );
        let _ = writeln!(
            out,
            "  victims            {:>10}  preempted (evictions the placements list: {}); victims undecided {}, unaccounted {}",
            p.preempted, p.preemptions_listed, p.victims_undecided, p.victims_unaccounted
        );
    }
    if let Some(g) = &s.gang {
        let _ = writeln!(
            out,
            "  gangs              {:>10}  of {}: whole {}, partial {}, none placed {} (latency below: per gang, its last member's put to its placement)",
            g.gangs, g.gang_size, g.gangs_whole, g.gangs_partial, g.gangs_unplaced
        );
    }
}

/// The `--agents` lines.
fn agents_table(out: &mut String, a: &super::AgentFigures) {
    let opt = |x: Option<f64>, unit: &str| x.map_or("n/a".into(), |x| format!("{x:.1}{unit}"));
    let _ = writeln!(
        out,
        "  hollow agents      {:>10}  lease TTL {} s, up in {:.1} s ({} keep-alive tasks and watch streams)",
        a.agents, a.lease_ttl_s, a.setup_s, a.shards
    );
    let _ = writeln!(
        out,
        "  quiet {:>4.0} s: etcd {:>7} writes/s  (puts {}, txns {}, deletes {}, raft proposals {}; keep-alives {:.0}/s)",
        a.window_s,
        opt(a.etcd_writes_per_s, ""),
        opt(a.etcd_puts_per_s, "/s"),
        opt(a.etcd_txns_per_s, "/s"),
        opt(a.etcd_deletes_per_s, "/s"),
        opt(a.etcd_proposals_per_s, "/s"),
        a.keepalives_per_s
    );
    let _ = writeln!(
        out,
        "  quiet cpu          {:>9.1}%  of a core for the leader (etcd {}, the hollow agents {:.1}%); {} live leases",
        a.leader_cpu_pct,
        opt(a.etcd_cpu_pct, "%"),
        a.bench_cpu_pct,
        a.live_leases
    );
    if let Some(l) = &a.loss {
        let acted = match (&l.leader_acted_ms, &l.leader_action) {
            (Some(ms), Some(what)) => format!("the leader acted after {ms:.0} ms ({what})"),
            _ => "the leader did not act within the TTL + 15 s".into(),
        };
        let _ = writeln!(
            out,
            "  agent killed       {:>10}  health key gone after {} ms; {acted}; within TTL + 1 s: {}",
            l.engine,
            l.health_deleted_ms
                .map_or("(never)".into(), |ms| format!("{ms:.0}")),
            l.within_ttl_plus_1s
        );
    }
    if let Some(l) = &a.launch {
        let _ = writeln!(
            out,
            "  launched batch     {:>10.0}  decisions/s, against {:.0} without launch: ratio {:.3}",
            l.decisions_per_s, l.plain_decisions_per_s, l.ratio
        );
        let _ = writeln!(
            out,
            "  launched cost      {:>10.1} us of controller cpu per decision; etcd {} s, bench (with the agents) {:.3} s per 1k decisions",
            l.controller_cpu_us_per_decision,
            l.etcd_cpu_s_per_1k_decisions
                .map_or("n/a".into(), |x| format!("{x:.3}")),
            l.bench_cpu_s_per_1k_decisions
        );
        let _ = writeln!(
            out,
            "  put -> running ms  {:>10}  p50 {:.1}  p99 {:.1}  max {:.1}  ({} of {} placed running, {} missing, {} misplaced, {} stale)",
            "",
            l.running_p50_ms,
            l.running_p99_ms,
            l.running_max_ms,
            l.running,
            l.placed,
            l.missing_running,
            l.misplaced_running,
            l.stale_reports
        );
        let _ = writeln!(
            out,
            "  both batches       overcommitted engines {}, double-bound ports {}, mismatched {}, assigned twice {}, missing/duplicate decisions {}",
            l.overcommitted_engines,
            l.double_bound_ports,
            l.mismatched,
            l.assigned_twice,
            l.duplicate_or_missing_decisions
        );
    }
    if a.lost_leases + a.agent_errors > 0 {
        let _ = writeln!(
            out,
            "  agents' trouble    {} keep-alives found their lease gone, {} calls failed",
            a.lost_leases, a.agent_errors
        );
    }
}

/// Latency over submit time and its distribution, titled with the run's parameters and marked
/// at p50 and p99.
pub(super) fn plot(
    path: &Path,
    r: &BenchResult,
    series: &[(f64, f64)],
    sorted: &[f64],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 1200)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, rest) = root.split_vertically(60);
    title.draw(&Text::new(
        format!("citadel bench: {}", r.parameters()),
        (10, 8),
        ("sans-serif", 16),
    ))?;
    title.draw(&Text::new(
        format!(
            "{:.0} placements/s, ratio {:.3}{}; p50 {:.1} ms, p99 {:.1} ms",
            r.placements_per_s,
            r.ratio,
            r.ratio_to_floor
                .map(|f| format!(" ({f:.3} of the floor)"))
                .unwrap_or_default(),
            r.p50_ms,
            r.p99_ms
        ),
        (10, 32),
        ("sans-serif", 14),
    ))?;
    let (top, rest) = rest.split_vertically(400);
    let (bottom, windows) = rest.split_vertically(400);
    let max_t = series.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-3);
    let max_ms = sorted.last().copied().unwrap_or(1.0).max(1e-3);
    let mut chart = ChartBuilder::on(&top)
        .caption("latency by submit time", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..max_t * 1.02, 0.0..max_ms * 1.05)?;
    chart
        .configure_mesh()
        .x_desc("seconds since start")
        .y_desc("put -> decision (ms)")
        .draw()?;
    // At most ~5,000 dots: the file stays small and the shape is the same.
    let every = (series.len() / 5_000).max(1);
    chart.draw_series(
        series
            .iter()
            .step_by(every)
            .map(|(t, ms)| Circle::new((*t, *ms), 1, BLUE.mix(0.4).filled())),
    )?;
    for (ms, name, color) in [(r.p50_ms, "p50", GREEN), (r.p99_ms, "p99", RED)] {
        chart
            .draw_series(LineSeries::new(
                [(0.0, ms), (max_t * 1.02, ms)],
                color.stroke_width(1),
            ))?
            .label(format!("{name} {ms:.1} ms"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    let mut cdf = ChartBuilder::on(&bottom)
        .caption("latency distribution (CDF)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..max_ms * 1.05, 0.0..1.0)?;
    cdf.configure_mesh()
        .x_desc("put -> decision (ms)")
        .y_desc("fraction of requests")
        .draw()?;
    let n = sorted.len().max(1) as f64;
    let step = (sorted.len() / 2_000).max(1);
    cdf.draw_series(LineSeries::new(
        sorted
            .iter()
            .enumerate()
            .step_by(step)
            .map(|(i, ms)| (*ms, (i + 1) as f64 / n)),
        &BLUE,
    ))?;
    for (ms, color) in [(r.p50_ms, GREEN), (r.p99_ms, RED)] {
        cdf.draw_series(LineSeries::new(
            [(ms, 0.0), (ms, 1.0)],
            color.stroke_width(1),
        ))?;
    }
    plot_windows(&windows, &r.throughput)?;
    root.present()?;
    Ok(())
}

/// Decisions per 10-second window, with the median and the slow-mode line under it.
fn plot_windows<DB: plotters::prelude::DrawingBackend>(
    area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    t: &super::Throughput,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    use plotters::prelude::*;
    let caption = match t.slowest_over_median {
        Some(r) => format!(
            "decisions per {:.0}-s window: slowest {:.2} of the median{}",
            t.window_s,
            r,
            if t.slow_mode { " (slow mode)" } else { "" }
        ),
        None => "decisions per 10-s window: the run was shorter than one window".into(),
    };
    let top = t
        .windows
        .iter()
        .map(|w| w.decisions_per_s)
        .fold(1.0, f64::max);
    let end = t.windows.len() as f64 * t.window_s;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0.0..end.max(t.window_s), 0.0..top * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first put")
        .y_desc("decisions/s")
        .draw()?;
    chart.draw_series(t.windows.iter().map(|w| {
        Rectangle::new(
            [
                (w.start_s, 0.0),
                (w.start_s + t.window_s * 0.9, w.decisions_per_s),
            ],
            BLUE.mix(0.5).filled(),
        )
    }))?;
    if let Some(m) = t.median_per_s {
        for (y, color) in [(m, GREEN), (m * super::SLOW_MODE_BELOW, RED)] {
            chart.draw_series(LineSeries::new([(0.0, y), (end, y)], color.stroke_width(1)))?;
        }
    }
    Ok(())
}
