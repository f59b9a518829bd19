//! `citadel bench`: the production code paths under load, measured against etcd's own rate and,
//! with `--baseline floor`, against the contract's floor.
//!
//! One run: start (or reuse) an etcd, register engines, measure etcd's raw single-put rate with
//! the same client concurrency as the submitters, start the real controller binary (a leader and
//! optional standbys), submit requests, time each request from its put to its decision (seen on
//! a watch), check the invariants from etcd itself, optionally run the floor's minimal writer on
//! the same requests, and measure etcd's raw rate again.
//!
//! It runs the controller as a separate binary and may not reach into a running replica: what it
//! measures, it reads from etcd and from `/proc`. `--quality` is apart: it runs the scheduler
//! in-process on seeded fleets, with no etcd at all (`quality.rs`).

mod agents;
pub mod etcd;
mod floor;
mod phase;
mod proc;
pub mod quality;
mod report;
mod scenario;
mod timeline;
mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use etcd_client::{Client, DeleteOptions, GetOptions};
use serde::Serialize;

use crate::invariants::{self, Report};
use crate::keys::Keys;
use crate::manager::MAX_TXN_OPS;
use crate::store::{self, EtcdConfig};
use agents::HollowFleet;
pub use agents::{AgentFigures, LaunchFigures, LossFigures};
use phase::{Batch, Seen};
use proc::{Controllers, Meter, proc_usage};
pub use report::render_table;
pub use scenario::{GangFigures, PreemptionFigures, Scenario, ScenarioFigures};
pub use timeline::{SLOW_MODE_BELOW, Throughput, Window};
pub use workload::request_json;
use workload::{Fleet, RawPuts, percentile, raw_put_rate, register_engines};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Engines to register.
    #[arg(long, default_value_t = 1_000)]
    pub engines: usize,
    /// Requests to submit.
    #[arg(long, default_value_t = 20_000)]
    pub requests: usize,
    /// Concurrent submitters (and clients of the raw put measurement).
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Standby replicas besides the leader.
    #[arg(long, default_value_t = 0)]
    pub replicas: usize,
    /// Requests per submit transaction (1 = one put each).
    #[arg(long, default_value_t = 1)]
    pub submit_batch: usize,
    /// Offer this many requests per second instead of as fast as possible.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Draw latency over time and its distribution into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Give up waiting for decisions after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Scheduler worker threads of the controller.
    #[arg(long)]
    pub workers: Option<usize>,
    /// etcd's --max-txn-ops: the bench starts its own etcd with it and tells the controller
    /// (with --etcd, raise it on that etcd yourself). 128 is etcd's default.
    #[arg(long, default_value_t = MAX_TXN_OPS as u32, value_parser = clap::value_parser!(u32).range(8..=100_000))]
    pub max_txn_ops: u32,
    /// The controllers' `--nice` (see `citadel controller --help`).
    #[arg(long, default_value_t = crate::controller::DEFAULT_NICE, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub nice: i32,
    /// Also measure, in the same run, the contract's floor: the least any client can do while
    /// it writes one decision per request with the leader's guards (see BENCHMARKS.md). Adds
    /// `floor_per_s` and `ratio_to_floor`.
    #[arg(long, value_enum)]
    pub baseline: Option<Baseline>,
    /// Size the engines so that together they hold this many times what the requests ask for
    /// (cpus and memory alike, sizes 1 to 4): 1.1 fits everything, 0.3 saturates the cluster.
    /// Without it, engines have 8 to 64 cpus and 16 to 128 GB.
    #[arg(long, value_parser = parse_headroom)]
    pub headroom: Option<f64>,
    /// No progress lines (a terminal gets a bar; other output one line per tenth).
    #[arg(long)]
    pub quiet_progress: bool,
    /// With --etcd: leave the run's keys there, to look at its decisions afterwards (the
    /// prefix is printed at the start).
    #[arg(long)]
    pub keep: bool,
    /// Measure placement quality instead (pure, in-process, seeded): engines binpack uses
    /// beside first-fit decreasing and the lower bound, and spread's balance, on two fleets.
    #[arg(long)]
    pub quality: bool,
    /// With --quality: the generator's seed.
    #[arg(long, default_value_t = 16)]
    pub seed: u64,
    /// Run N hollow agents in this process instead of registering engines: each registers its
    /// engine (with `agent` set), keeps one lease alive, puts its health key on it, watches its
    /// own assignments and reports what it is assigned `running`. Adds the quiet window's etcd
    /// writes and leader cpu, and one agent's loss (`agents` in the JSON).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub agents: Option<u64>,
    /// With --agents: submit the requests a second time with `"launch": true` and compare the
    /// two batches' decisions/s; time each launched request from its put to its `running`
    /// report.
    #[arg(long, requires = "agents")]
    pub launch: bool,
    /// With --agents: each agent's lease TTL, seconds.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=600))]
    pub agent_ttl: u64,
    /// With --agents: the quiet window measured before any request, seconds.
    #[arg(long, default_value_t = 30)]
    pub quiet_window: u64,
    /// Output format (`json` is the same as --json).
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Format>,
    /// What to run: the default request mix; `preemption` (engines filled with low-priority
    /// requests, then `--requests` high-priority ones that each evict one); or `gang`
    /// (`--requests` in gangs of `--gang-size`, placed all or nothing). See docs/bench.md.
    #[arg(long, value_enum, default_value_t = Scenario::Default)]
    pub scenario: Scenario,
    /// With `--scenario gang`: members per gang (`group_min`).
    #[arg(long, default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=1000))]
    pub gang_size: usize,
    /// Start the bench's own etcd as a cluster of N members on loopback, each with its own data
    /// directory and log; the controllers, submitters, raw puts and floor get every member's
    /// endpoint, and etcd's cpu is the members' sum. Not with --etcd.
    #[arg(long, default_value_t = 1, value_name = "N", conflicts_with = "etcd",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=7))]
    pub etcd_members: usize,
    /// After the full-speed run, decide the same requests again at these fractions of its
    /// placements/s (each in (0, 1], comma-separated), each on a fresh prefix with fresh
    /// controllers: latency at a load the system sustains (`at_load` in the JSON). Not with
    /// --rate, --agents or a --scenario.
    #[arg(long, value_name = "F[,F…]", value_delimiter = ',', value_parser = parse_fraction,
          conflicts_with = "rate")]
    pub at_load: Vec<f64>,
}

/// What `citadel bench` prints: its table, or one JSON document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

impl BenchArgs {
    /// Whether the report is JSON (`--json` or `-o json`).
    pub fn json(&self) -> bool {
        self.json || self.output == Some(Format::Json)
    }
}

fn parse_headroom(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(h) if h.is_finite() && (0.01..=100.0).contains(&h) => Ok(h),
        _ => Err(format!("{s:?} is not a headroom between 0.01 and 100")),
    }
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!("{s:?} is not a fraction in (0, 1]")),
    }
}

/// What `--baseline` measures next to citadel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// The contract's floor: a minimal writer of the same decisions with the same guards.
    Floor,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("etcd: {}", store::short(.0))]
    Etcd(#[from] etcd_client::Error),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    EtcdProcess(#[from] etcd::EtcdProcessError),
    #[error("{0}")]
    Setup(String),
}

/// The figures of one run (`--json` prints this).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub engines: usize,
    pub requests: usize,
    pub clients: usize,
    pub submit_batch: usize,
    pub replicas: usize,
    /// The controllers' `--nice`.
    pub controller_nice: i32,
    pub offered_rate: Option<f64>,
    /// `--headroom`: the engines' total capacity over the requests' total demand.
    pub headroom: Option<f64>,
    pub placed: usize,
    pub unschedulable: usize,
    pub invalid: usize,
    pub undecided: usize,
    pub placements_per_s: f64,
    pub decisions_per_s: f64,
    pub raw_put_per_s: f64,
    pub ratio: f64,
    /// With `--baseline floor`: the floor's decisions per second, and citadel's placements per
    /// second over it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_floor: Option<f64>,
    pub p50_ms: f64,
    /// The median user's put (or `--submit-batch` transaction), from send to etcd's answer,
    /// while citadel runs, and in the raw measurements. With a fixed number of clients a put's
    /// latency is what sets the rate.
    pub put_p50_ms: f64,
    pub raw_put_p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Decisions per 10-second window, the slowest window over the median one, and whether
    /// the run fell into a slow mode; beside each window, etcd's and the leader's figures.
    pub throughput: Throughput,
    pub controller_cpu_s: f64,
    pub controller_cpu_us_per_placement: f64,
    pub controller_rss_mb: f64,
    pub controller_rss_base_mb: f64,
    pub controller_bytes_per_placement: f64,
    /// The same per decision of any status: a saturated run decides most requests
    /// `unschedulable`, and those cost the controller too.
    pub controller_cpu_us_per_decision: f64,
    pub controller_bytes_per_decision: f64,
    /// etcd's members, as its member list says: `--etcd-members` for the bench's own etcd (the
    /// number started, should the list not answer), a given etcd's own (absent if it would
    /// not answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_members: Option<usize>,
    /// etcd's database file and the part of it in use at the end, before clean-up (MB), and
    /// whether its history was compacted during the run (by the leader's `--compact-every`).
    pub etcd_db_mb: Option<f64>,
    pub etcd_db_in_use_mb: Option<f64>,
    pub etcd_history_compacted: Option<bool>,
    /// etcd's cpu seconds per 1,000 raw puts, and per 1,000 placements (own etcd only).
    pub etcd_cpu_s_per_1k_raw_puts: Option<f64>,
    pub etcd_cpu_s_per_1k_placements: Option<f64>,
    /// This bench process's own cpu seconds while submitting and watching (load generator).
    pub bench_cpu_s: f64,
    /// The same per 1,000 raw puts and per 1,000 placements: the load generator shares the
    /// two cores with etcd and the controller, so its share is part of what a ratio measures.
    pub bench_cpu_s_per_1k_raw_puts: f64,
    pub bench_cpu_s_per_1k_placements: f64,
    pub overcommitted_engines: usize,
    pub double_bound_ports: usize,
    pub mismatched: usize,
    pub duplicate_or_missing_decisions: usize,
    pub elapsed_s: f64,
    /// With `--agents`: the hollow agents' figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agents: Option<AgentFigures>,
    /// With `--scenario preemption|gang`: `scenario` and what it found, beside the rest.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<ScenarioFigures>,
    /// With `--at-load`: each level's figures, in the order given.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub at_load: Vec<AtLoad>,
}

/// One `--at-load` level: the default run again, on a fresh prefix of the same etcd with fresh
/// controllers, offered `fraction` of the full-speed run's placements/s.
#[derive(Debug, Clone, Serialize)]
pub struct AtLoad {
    pub fraction: f64,
    /// `fraction` × the full-speed run's `placements_per_s`: the `--rate` this level ran at.
    pub offered_per_s: f64,
    pub placements_per_s: f64,
    pub decided: usize,
    pub undecided: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub overcommitted_engines: usize,
    pub double_bound_ports: usize,
    pub mismatched: usize,
    pub duplicate_or_missing_decisions: usize,
}

impl AtLoad {
    fn new(fraction: f64, offered_per_s: f64, c: &Citadel) -> AtLoad {
        let (seen, report) = (&c.seen, &c.report);
        AtLoad {
            fraction,
            offered_per_s,
            placements_per_s: seen.per_s(seen.placed),
            decided: seen.decided(),
            undecided: c.submitted.saturating_sub(seen.decided()),
            p50_ms: seen.p(0.50),
            p90_ms: seen.p(0.90),
            p99_ms: seen.p(0.99),
            p999_ms: seen.p(0.999),
            max_ms: seen.latencies.last().copied().unwrap_or(0.0),
            overcommitted_engines: report.overcommitted_engines.len(),
            double_bound_ports: report.double_bound_ports.len(),
            mismatched: report.mismatched.len(),
            duplicate_or_missing_decisions: report.decided.abs_diff(c.submitted),
        }
    }

    /// The level's invariant violations.
    pub fn violations(&self) -> usize {
        self.overcommitted_engines
            + self.double_bound_ports
            + self.mismatched
            + self.duplicate_or_missing_decisions
    }
}

impl BenchResult {
    /// Invariant violations: the run's, with `--agents --launch` the launched batch's, and with
    /// `--at-load` every level's.
    pub fn violations(&self) -> usize {
        self.overcommitted_engines
            + self.double_bound_ports
            + self.mismatched
            + self.duplicate_or_missing_decisions
            + self
                .agents
                .as_ref()
                .and_then(|a| a.launch.as_ref())
                .map_or(0, |l| l.violations())
            + self
                .scenario
                .as_ref()
                .map_or(0, |s| s.failures(self.requests))
            + self.at_load.iter().map(AtLoad::violations).sum::<usize>()
    }
}

impl BenchResult {
    /// The run's parameters, in one line (the table's first, the plot's title).
    pub(crate) fn parameters(&self) -> String {
        let rate = self
            .offered_rate
            .map(|x| format!("{x:.0}/s offered"))
            .unwrap_or_else(|| "as fast as possible".into());
        let headroom = self
            .headroom
            .map(|h| format!(", headroom {h}"))
            .unwrap_or_default();
        let agents = match self.agents.as_ref() {
            Some(a) if a.launch.is_some() => " (hollow agents, with a launched batch)",
            Some(_) => " (hollow agents)",
            None => "",
        };
        let scenario = match self.scenario.as_ref() {
            Some(s) => match &s.gang {
                Some(g) => format!("scenario gang (gangs of {}): ", g.gang_size),
                None => format!("scenario {}: ", s.scenario),
            },
            None => String::new(),
        };
        let members = self
            .etcd_members
            .map(|n| format!(", {n}-member etcd"))
            .unwrap_or_default();
        format!(
            "{scenario}{} engines{agents}{headroom}, {} requests, {} clients, submit batch {}, {} standby(s), {rate}, controller nice {}{members}",
            self.engines,
            self.requests,
            self.clients,
            self.submit_batch,
            self.replicas,
            self.controller_nice
        )
    }
}

/// The etcd a run starts when it is given none (`--etcd-members` of them, every one with the
/// same options), and how to reach it: every member's endpoint.
async fn own_or_given(
    args: &BenchArgs,
    etcd: Option<EtcdConfig>,
) -> Result<(Option<etcd::EtcdServer>, EtcdConfig), BenchError> {
    match etcd {
        Some(cfg) => Ok((None, cfg)),
        None => {
            // The own etcd lives as long as the run.
            let p = etcd::EtcdServer::start_cluster(
                etcd::EtcdOptions {
                    auto_compaction_retention: Some("100000".into()),
                    quota_bytes: Some(8 * 1024 * 1024 * 1024),
                    max_txn_ops: (args.max_txn_ops as usize != MAX_TXN_OPS)
                        .then_some(args.max_txn_ops),
                    ..etcd::EtcdOptions::default()
                },
                args.etcd_members.max(1),
            )
            .await?;
            let cfg = EtcdConfig::new(p.endpoints());
            Ok((Some(p), cfg))
        }
    }
}

/// How many members etcd's member list names, if it answers within a few seconds.
async fn member_count(client: &Client) -> Option<usize> {
    let mut cluster = client.cluster_client();
    match tokio::time::timeout(Duration::from_secs(5), cluster.member_list()).await {
        Ok(Ok(list)) => Some(list.members().len()),
        _ => None,
    }
}

/// `--at-load` runs the default requests alone, at a rate of its own.
fn validate_at_load(args: &BenchArgs) -> Result<(), BenchError> {
    if args.at_load.is_empty() {
        return Ok(());
    }
    if args.scenario != Scenario::Default || args.agents.is_some() {
        return Err(BenchError::Setup(
            "--at-load runs with the default scenario only, without --agents".into(),
        ));
    }
    if args.rate.is_some() {
        return Err(BenchError::Setup(
            "--at-load sets the rate of each level itself: drop --rate".into(),
        ));
    }
    Ok(())
}

/// The prefix of `--at-load` level `i` (from 0) of the run under `prefix`.
fn level_prefix(prefix: &str, i: usize) -> String {
    format!("{prefix}-load-{}", i + 1)
}

/// The `--at-load` levels, one after the other: each on a fresh prefix (its engines registered
/// again, the same fleet), with fresh controllers, offered its fraction of `full_per_s`, the
/// full-speed run's placements/s. The phases before it stay in etcd: deleting a million keys
/// would cost etcd 3.4 more than keeping them (a delete that large grows its read buffer for
/// good, and the tombstones make its next compaction scan them all), right before a
/// measurement.
async fn at_load(
    args: &BenchArgs,
    etcd: &EtcdConfig,
    prefix: &str,
    conns: &[Client],
    meter: &Meter,
    fleet: &Fleet,
    full_per_s: f64,
) -> Result<Vec<AtLoad>, BenchError> {
    let mut levels = Vec::with_capacity(args.at_load.len());
    for (i, &fraction) in args.at_load.iter().enumerate() {
        let offered = fraction * full_per_s;
        if !(offered.is_finite() && offered > 0.0) {
            return Err(BenchError::Setup(format!(
                "--at-load: the full-speed run placed {full_per_s:.0}/s, no load to offer a fraction of"
            )));
        }
        let level = level_prefix(prefix, i);
        let keys = Keys::new(&level).map_err(|e| BenchError::Setup(e.to_string()))?;
        register_engines(&conns[0], &keys, fleet).await?;
        eprintln!("bench: at load {fraction}: offering {offered:.0} requests/s under {level}");
        let level_args = BenchArgs {
            rate: Some(offered),
            ..args.clone()
        };
        let c = citadel_phase(&level_args, etcd, &level, conns, &keys, meter, None).await?;
        let figures = AtLoad::new(fraction, offered, &c);
        eprintln!(
            "bench: at load {fraction}: {:.0} placements/s, p99 {:.1} ms",
            figures.placements_per_s, figures.p99_ms
        );
        levels.push(figures);
    }
    Ok(levels)
}

/// What the controller phase measured, besides what its watch saw.
struct Citadel {
    /// etcd's revision when the controllers started: compacted by the end, if the leader's
    /// compaction ran.
    first_revision: i64,
    seen: Seen,
    report: Report,
    /// The leader's cpu seconds, resident set at start and peak (MB).
    cpu_s: f64,
    rss0_mb: f64,
    rss_peak_mb: f64,
    etcd_cpu_s: Option<f64>,
    bench_cpu_s: f64,
    agents: Option<AgentFigures>,
    /// Requests submitted in all (a scenario's unmeasured ones too): one decision each.
    submitted: usize,
    /// What the per-placement and per-decision costs are divided by: the measured phase's.
    per_placement: usize,
    per_decision: usize,
    scenario: Option<ScenarioFigures>,
}

/// Runs the bench against `etcd` (its endpoints, TLS and credentials), or its own etcd when
/// `None`.
pub async fn run(mut args: BenchArgs, etcd: Option<EtcdConfig>) -> Result<BenchResult, BenchError> {
    let started = Instant::now();
    scenario::validate(&args)?;
    validate_at_load(&args)?;
    // Hollow agents register the engines: as many as agents.
    if let Some(n) = args.agents {
        args.engines = n as usize;
    }
    let (own, etcd) = own_or_given(&args, etcd).await?;
    let meter = Meter {
        etcd_pids: own.as_ref().map(etcd::EtcdServer::pids).unwrap_or_default(),
    };
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("/citadel-bench-{}", &run_id[..8]);
    let keys = Keys::new(&prefix).map_err(|e| BenchError::Setup(e.to_string()))?;
    let mut conns = Vec::new();
    for _ in 0..args.clients.clamp(1, 8) {
        conns.push(store::connect(&etcd, Some(Duration::from_secs(10))).await?);
    }
    let client = conns[0].clone();
    eprintln!("bench: etcd {} prefix {prefix}", etcd.endpoints_str());
    let fleet = match args.scenario {
        Scenario::Default => Fleet::new(args.engines, args.requests, args.headroom),
        _ => scenario::fleet(&args),
    };
    let hollow = match args.agents {
        None => {
            register_engines(&client, &keys, &fleet).await?;
            None
        }
        Some(n) => {
            let mut agent_conns = Vec::new();
            for _ in 0..(n as usize).div_ceil(1_250).clamp(1, 8) {
                agent_conns.push(store::connect(&etcd, Some(Duration::from_secs(10))).await?);
            }
            let hollow = HollowFleet::start(agent_conns, &keys, &fleet, args.agent_ttl).await?;
            eprintln!(
                "bench: {n} hollow agents registered and alive in {:.1} s",
                hollow.setup_s
            );
            Some(hollow)
        }
    };

    // etcd's own rate on the same etcd, same concurrency, before citadel runs. Its keys stay
    // until the end: deleting 20,000 keys in one request would grow etcd 3.4's read buffer
    // to that many entries for good (its `reset` keeps the length; every `Txn` then copies all
    // of it): up to a fifth of etcd's cpu in the placement phase went to that copy and its GC.
    let raw_prefix = format!("{prefix}-raw/");
    let raw_total = args.requests.clamp(1_000, 20_000);
    let (etcd0, own0) = (meter.etcd(), meter.own());
    let raw_before = raw_put_rate(&conns, &raw_prefix, raw_total, args.clients).await?;
    let raw_cpu = meter.etcd().zip(etcd0).map(|(b, a)| b - a);
    let raw_own_cpu = meter.own() - own0;
    eprintln!(
        "bench: raw single puts: {:.0}/s with {} clients",
        raw_before.per_s, args.clients
    );

    // The floor runs right before citadel and right after, and its rate is the mean of the
    // two: the machine drifts during a run, and this way both sides see the same drift.
    let floor_phase = |n: usize| {
        let (etcd, conns, prefix, args) = (&etcd, &conns, &prefix, &args);
        async move {
            let seen = floor::run(etcd, conns, prefix, n, args).await?;
            let per_s = seen.per_s(seen.placed);
            eprintln!("bench: the contract's floor ({n} of 2): {per_s:.0} decisions/s");
            Ok::<f64, BenchError>(per_s)
        }
    };
    let floor_before = match args.baseline {
        Some(Baseline::Floor) => Some(floor_phase(1).await?),
        None => None,
    };
    let citadel = match args.scenario {
        Scenario::Default => {
            citadel_phase(
                &args,
                &etcd,
                &prefix,
                &conns,
                &keys,
                &meter,
                hollow.as_ref(),
            )
            .await?
        }
        _ => scenario::citadel_phase(&args, &etcd, &prefix, &conns, &keys, &meter).await?,
    };
    drop(hollow);
    let floor = match floor_before {
        Some(before) => Some((before + floor_phase(2).await?) / 2.0),
        None => None,
    };

    // etcd's rate again, after: this machine's disk and neighbours drift during a run, so the
    // ratio uses the mean of the two measurements around it.
    let raw_after = raw_put_rate(&conns, &raw_prefix, raw_total, args.clients).await?;
    eprintln!("bench: raw single puts after: {:.0}/s", raw_after.per_s);
    let db = EtcdDb::read(&client, citadel.first_revision).await;
    let etcd_members = match member_count(&client).await {
        Some(n) => Some(n),
        None => own.as_ref().map(|o| o.members().len()),
    };
    let levels = at_load(
        &args,
        &etcd,
        &prefix,
        &conns,
        &meter,
        &fleet,
        citadel.seen.per_s(citadel.seen.placed),
    )
    .await?;
    // An etcd of the run's own goes away with it; a given one is left as it was found, unless
    // asked to keep what the run wrote.
    if own.is_none() && !args.keep {
        let levels: Vec<String> = (0..args.at_load.len())
            .map(|i| level_prefix(&prefix, i))
            .collect();
        cleanup(&client, &prefix, &raw_prefix, &levels).await;
    }
    let raw = Raw {
        puts: RawPuts {
            per_s: (raw_before.per_s + raw_after.per_s) / 2.0,
            p50_ms: (raw_before.p50_ms + raw_after.p50_ms) / 2.0,
        },
        total: raw_total,
        etcd_cpu_s: raw_cpu,
        own_cpu_s: raw_own_cpu,
    };
    let mut result = assemble(&args, &citadel, floor, &raw, &db, started);
    result.etcd_members = etcd_members;
    result.at_load = levels;
    if let Some(path) = &args.plot {
        match report::plot(path, &result, &citadel.seen.series, &citadel.seen.latencies) {
            Ok(()) => eprintln!("bench: plot written to {}", path.display()),
            Err(e) => eprintln!("bench: could not draw {}: {e}", path.display()),
        }
    }
    Ok(result)
}

/// The real controllers decide the requests; their cost is read from /proc around it.
async fn citadel_phase(
    args: &BenchArgs,
    etcd: &EtcdConfig,
    prefix: &str,
    conns: &[Client],
    keys: &Keys,
    meter: &Meter,
    hollow: Option<&HollowFleet>,
) -> Result<Citadel, BenchError> {
    let first_revision = revision_now(&conns[0]).await?;
    let controllers = Controllers::start(etcd, prefix, args, &conns[0], keys).await?;
    let leader = controllers.leader.pid();
    let window = match hollow {
        Some(fleet) => Some(
            agents::quiet_window(
                fleet,
                &conns[0],
                etcd.endpoints.first().map(String::as_str),
                leader,
                meter,
                args.quiet_window,
            )
            .await?,
        ),
        None => None,
    };
    let (cpu0, rss0, _) = proc_usage(leader).unwrap_or_default();
    let (etcd0, own0) = (meter.etcd(), meter.own());
    let seen = phase::run(
        etcd,
        conns,
        keys,
        args,
        Batch::PLAIN,
        hollow,
        controllers.leader_http.as_deref(),
    )
    .await?;
    let (cpu1, _, hwm) = proc_usage(leader).unwrap_or_default();
    let etcd_cpu_s = meter.etcd().zip(etcd0).map(|(b, a)| b - a);
    let bench_cpu_s = meter.own() - own0;
    let report = invariants::check_etcd(&conns[0], keys, 1.0).await?;
    let agents = match (hollow, window) {
        (Some(fleet), Some(mut figures)) => {
            let launched = args.launch;
            if launched {
                let (l0, e0, o0) = (
                    proc_usage(leader).unwrap_or_default().0,
                    meter.etcd(),
                    meter.own(),
                );
                let l = phase::run(
                    etcd,
                    conns,
                    keys,
                    args,
                    Batch::LAUNCHED,
                    hollow,
                    controllers.leader_http.as_deref(),
                )
                .await?;
                let cpu = (
                    proc_usage(leader).unwrap_or_default().0 - l0,
                    meter.etcd().zip(e0).map(|(b, a)| b - a),
                    meter.own() - o0,
                );
                let both = invariants::check_etcd(&conns[0], keys, 1.0).await?;
                figures.launch = Some(
                    agents::check_launched(
                        &conns[0],
                        keys,
                        fleet,
                        (&l, &seen),
                        args.requests,
                        &both,
                        cpu,
                    )
                    .await?,
                );
            }
            let batch = if launched {
                Batch::LAUNCHED
            } else {
                Batch::PLAIN
            };
            figures.loss =
                agents::measure_loss(&conns[0], keys, fleet, batch, args.requests).await?;
            let counts = fleet.counts();
            (figures.lost_leases, figures.agent_errors) = (counts.lost_leases, counts.errors);
            Some(figures)
        }
        _ => None,
    };
    drop(controllers);
    Ok(Citadel {
        first_revision,
        submitted: args.requests,
        per_placement: report.placed,
        per_decision: report.decided,
        scenario: None,
        seen,
        report,
        cpu_s: cpu1 - cpu0,
        rss0_mb: rss0,
        rss_peak_mb: hwm,
        etcd_cpu_s,
        bench_cpu_s,
        agents,
    })
}

/// etcd's revision now: where a phase's own writes begin.
pub(super) async fn revision_now(client: &Client) -> Result<i64, BenchError> {
    Ok(client
        .kv_client()
        .get("/", Some(GetOptions::new().with_count_only()))
        .await?
        .header()
        .map_or(0, |h| h.revision()))
}

/// Leaves no trace on a shared etcd: the run's prefix, the raw keys, the floor's and the
/// `--at-load` levels'.
async fn cleanup(client: &Client, prefix: &str, raw_prefix: &str, levels: &[String]) {
    let mut kv = client.kv_client();
    let fixed = [
        raw_prefix.to_string(),
        format!("{prefix}-floor-1/"),
        format!("{prefix}-floor-2/"),
        format!("{prefix}/"),
    ];
    for p in fixed
        .into_iter()
        .chain(levels.iter().map(|l| format!("{l}/")))
    {
        if let Err(e) = kv
            .delete(p.as_str(), Some(DeleteOptions::new().with_prefix()))
            .await
        {
            tracing::warn!(prefix = %p, error = %store::short(&e), "could not clean up the bench's keys");
        }
    }
}

/// etcd's database at the end of a run (`None` where etcd did not say).
struct EtcdDb {
    size_mb: Option<f64>,
    in_use_mb: Option<f64>,
    compacted: Option<bool>,
}

impl EtcdDb {
    async fn read(client: &Client, first_revision: i64) -> EtcdDb {
        let mb = |b: i64| b as f64 / (1024.0 * 1024.0);
        let status = client.maintenance_client().status().await.ok();
        // A read at the revision the run began at fails once the history below it is gone.
        let compacted = match client
            .kv_client()
            .get(
                "/",
                Some(
                    GetOptions::new()
                        .with_count_only()
                        .with_revision(first_revision.max(1)),
                ),
            )
            .await
        {
            Ok(_) => Some(false),
            Err(e) if store::EtcdErrorKind::of(&e) == store::EtcdErrorKind::Compacted => Some(true),
            Err(_) => None,
        };
        EtcdDb {
            size_mb: status.as_ref().map(|s| mb(s.db_size())),
            in_use_mb: status.as_ref().map(|s| mb(s.raft_used_db_size())),
            compacted,
        }
    }
}

/// etcd's raw put rate (the mean of the measurements before and after), and what it cost.
struct Raw {
    puts: RawPuts,
    total: usize,
    etcd_cpu_s: Option<f64>,
    own_cpu_s: f64,
}

fn assemble(
    args: &BenchArgs,
    c: &Citadel,
    floor_per_s: Option<f64>,
    raw: &Raw,
    db: &EtcdDb,
    started: Instant,
) -> BenchResult {
    let (raw_total, raw_cpu, raw_own_cpu) = (raw.total, raw.etcd_cpu_s, raw.own_cpu_s);
    let raw = &raw.puts;
    let (seen, report) = (&c.seen, &c.report);
    let placements_per_s = seen.per_s(seen.placed);
    let placed = c.per_placement.max(1) as f64;
    let decided = c.per_decision.max(1) as f64;
    let grown = (c.rss_peak_mb - c.rss0_mb).max(0.0) * 1024.0 * 1024.0;
    BenchResult {
        engines: args.engines,
        requests: args.requests,
        clients: args.clients,
        submit_batch: args.submit_batch.max(1),
        replicas: args.replicas,
        controller_nice: args.nice,
        offered_rate: args.rate,
        headroom: args.headroom,
        placed: report.placed,
        unschedulable: report.unschedulable,
        invalid: report.invalid,
        undecided: args.requests.saturating_sub(seen.decided()),
        placements_per_s,
        decisions_per_s: seen.per_s(seen.decided()),
        raw_put_per_s: raw.per_s,
        ratio: placements_per_s / raw.per_s.max(1e-9),
        floor_per_s,
        ratio_to_floor: floor_per_s.map(|f| placements_per_s / f.max(1e-9)),
        p50_ms: seen.p(0.50),
        put_p50_ms: percentile(&seen.put_ms, 0.50),
        raw_put_p50_ms: raw.p50_ms,
        p90_ms: seen.p(0.90),
        p99_ms: seen.p(0.99),
        p999_ms: seen.p(0.999),
        max_ms: seen.latencies.last().copied().unwrap_or(0.0),
        throughput: seen.throughput.clone(),
        controller_cpu_s: c.cpu_s,
        controller_cpu_us_per_placement: c.cpu_s * 1e6 / placed,
        controller_rss_mb: c.rss_peak_mb,
        controller_rss_base_mb: c.rss0_mb,
        controller_bytes_per_placement: grown / placed,
        controller_cpu_us_per_decision: c.cpu_s * 1e6 / decided,
        controller_bytes_per_decision: grown / decided,
        etcd_db_mb: db.size_mb,
        etcd_db_in_use_mb: db.in_use_mb,
        etcd_history_compacted: db.compacted,
        etcd_cpu_s_per_1k_raw_puts: raw_cpu.map(|x| x * 1000.0 / raw_total as f64),
        etcd_cpu_s_per_1k_placements: c.etcd_cpu_s.map(|x| x * 1000.0 / placed),
        bench_cpu_s: c.bench_cpu_s,
        bench_cpu_s_per_1k_raw_puts: raw_own_cpu * 1000.0 / raw_total as f64,
        bench_cpu_s_per_1k_placements: c.bench_cpu_s * 1000.0 / placed,
        overcommitted_engines: report.overcommitted_engines.len(),
        double_bound_ports: report.double_bound_ports.len(),
        mismatched: report.mismatched.len(),
        duplicate_or_missing_decisions: report.decided.abs_diff(c.submitted),
        elapsed_s: started.elapsed().as_secs_f64(),
        agents: c.agents.clone(),
        scenario: c.scenario.clone(),
        etcd_members: None,
        at_load: Vec::new(),
    }
}
