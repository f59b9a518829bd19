//! `citadel bench`: the production code paths under load, measured against etcd's own rate.
//!
//! One run: start (or reuse) an etcd, register engines, measure etcd's raw single-put rate with
//! the same client concurrency as the submitters, start the real controller binary (a leader and
//! optional standbys), submit requests, time each request from its put to its decision (seen on a
//! watch), and check the invariants from etcd itself at the end.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use etcd_client::{Client, DeleteOptions, GetOptions, Txn, TxnOp, WatchOptions};
use serde::Serialize;

#[cfg(feature = "bench-etcd")]
use citadel_testkit::etcd::{EtcdOptions, EtcdProcess};

use crate::invariants::{self, Report};
use crate::keys::Keys;
use crate::manager::MAX_TXN_OPS;
use crate::model::{EngineId, RequestId};
use crate::store::{self, EtcdConfig};

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
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[cfg(feature = "bench-etcd")]
    #[error(transparent)]
    EtcdProcess(#[from] citadel_testkit::etcd::EtcdProcessError),
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
    pub placed: usize,
    pub unschedulable: usize,
    pub invalid: usize,
    pub undecided: usize,
    pub placements_per_s: f64,
    pub decisions_per_s: f64,
    pub raw_put_per_s: f64,
    pub ratio: f64,
    pub p50_ms: f64,
    /// The median user's put (or `--submit-batch` transaction), from send to etcd's answer,
    /// while citadel runs, and in the raw measurements. With a fixed number of clients a put's
    /// latency is what sets the rate.
    pub put_p50_ms: f64,
    pub raw_put_p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub controller_cpu_s: f64,
    pub controller_cpu_us_per_placement: f64,
    pub controller_rss_mb: f64,
    pub controller_rss_base_mb: f64,
    pub controller_bytes_per_placement: f64,
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
}

/// A child process of this binary; SIGTERMed (then killed) when dropped.
struct ChildProc(Child);

impl ChildProc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Some(pid) = i32::try_from(self.0.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// cpu seconds (user + system) and resident set (current, peak) in MB, from /proc.
fn proc_usage(pid: u32) -> Option<(f64, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ is 100 on Linux x86_64 and arm64.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |name: &str| -> Option<f64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<f64>()
            .ok()
    };
    Some((
        (utime + stime) / ticks,
        kb("VmRSS:")? / 1024.0,
        kb("VmHWM:")? / 1024.0,
    ))
}

fn engine_json(i: usize) -> String {
    let cpus = [8, 16, 32, 64][i % 4];
    let memory = [16_384, 32_768, 65_536, 131_072][(i / 4) % 4];
    let region = if i.is_multiple_of(2) {
        "eu-west"
    } else {
        "us-east"
    };
    let disk = if i.is_multiple_of(3) { "ssd" } else { "hdd" };
    let labels = [
        format!("\"zone=z{}\"", i % 5),
        format!("\"region={region}\""),
        format!("\"disk={disk}\""),
    ];
    format!(
        r#"{{"addr":"tcp://127.{}.{}.{}:2375","cpus":{cpus},"memory":{memory},"labels":[{}]}}"#,
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255,
        labels.join(",")
    )
}

/// A mix of service and batch requests, some with constraints and host ports.
pub fn request_json(n: usize) -> String {
    let cpus = [0.1, 0.25, 0.5, 1.0][n % 4];
    let memory = [128, 256, 512, 1024][(n / 4) % 4];
    let kind = if n % 5 < 3 { "service" } else { "batch" };
    let mut extra = String::new();
    match n % 20 {
        0 => extra.push_str(r#","labels":["zone==z1"]"#),
        1 => extra.push_str(r#","labels":["region==eu-*","disk==ssd"]"#),
        2 => extra.push_str(r#","labels":["zone!=z0","disk==~ssd"]"#),
        3 => extra.push_str(&format!(r#","bind_ports":[{{"port":{}}}]"#, 8000 + n % 50)),
        _ => {}
    }
    format!(
        r#"{{"image":"bench/app:{}","cpus":{cpus},"memory":{memory},"type":"{kind}"{extra}}}"#,
        n % 100
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// What one measurement of etcd's own put rate found.
struct RawPuts {
    per_s: f64,
    /// The median put, from send to etcd's answer.
    p50_ms: f64,
}

/// Puts `total` keys from `clients` concurrent tasks over a few connections.
async fn raw_put_rate(
    conns: &[Client],
    prefix: &str,
    total: usize,
    clients: usize,
) -> Result<RawPuts, BenchError> {
    let next = Arc::new(AtomicUsize::new(0));
    let value = request_json(7);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let mut kv = conns[c % conns.len()].kv_client();
        let (next, prefix, value) = (next.clone(), prefix.to_string(), value.clone());
        tasks.spawn(async move {
            let mut took = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, etcd_client::Error>(took);
                }
                let sent = Instant::now();
                kv.put(format!("{prefix}{n:08}"), value.clone(), None)
                    .await?;
                took.push(sent.elapsed().as_secs_f64() * 1e3);
            }
        });
    }
    let mut took = Vec::with_capacity(total);
    while let Some(r) = tasks.join_next().await {
        took.extend(r.map_err(|e| BenchError::Setup(e.to_string()))??);
    }
    let per_s = total as f64 / start.elapsed().as_secs_f64();
    took.sort_by(f64::total_cmp);
    Ok(RawPuts {
        per_s,
        p50_ms: percentile(&took, 0.5),
    })
}

struct Timings {
    start: Instant,
    sent: Vec<AtomicU64>,
    /// When etcd answered the request's put.
    acked: Vec<AtomicU64>,
    decided: Vec<AtomicU64>,
    decided_count: AtomicUsize,
    placed: AtomicUsize,
}

impl Timings {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64 + 1
    }
}

/// Runs the bench against `etcd` (its endpoints, TLS and credentials), or its own etcd when
/// `None`.
pub async fn run(args: BenchArgs, etcd: Option<EtcdConfig>) -> Result<BenchResult, BenchError> {
    let started = Instant::now();
    let (_etcd_proc, etcd) = match etcd {
        Some(cfg) => (None, cfg),
        #[cfg(not(feature = "bench-etcd"))]
        None => {
            return Err(BenchError::Setup(
                "this build cannot start an etcd of its own (feature bench-etcd): pass --etcd"
                    .into(),
            ));
        }
        #[cfg(feature = "bench-etcd")]
        None => {
            let p = EtcdProcess::start_with(EtcdOptions {
                auto_compaction_retention: Some("100000".into()),
                quota_bytes: Some(8 * 1024 * 1024 * 1024),
                max_txn_ops: (args.max_txn_ops as usize != MAX_TXN_OPS).then_some(args.max_txn_ops),
                ..EtcdOptions::default()
            })
            .await?;
            let cfg = EtcdConfig::new(vec![p.endpoint()]);
            (Some(p), cfg)
        }
    };
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("/citadel-bench-{}", &run_id[..8]);
    let keys = Keys::new(&prefix).map_err(|e| BenchError::Setup(e.to_string()))?;
    let conns_n = args.clients.clamp(1, 8);
    let mut conns = Vec::new();
    for _ in 0..conns_n {
        conns.push(store::connect(&etcd, Some(Duration::from_secs(10))).await?);
    }
    let client = conns[0].clone();
    eprintln!("bench: etcd {} prefix {prefix}", etcd.endpoints_str());

    // Engines, 64 per txn.
    let mut kv = client.kv_client();
    for chunk in (0..args.engines).collect::<Vec<_>>().chunks(64) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|i| {
                let id = EngineId::new(format!("engine-{i:05}")).expect("valid id");
                TxnOp::put(keys.engine(&id), engine_json(*i), None)
            })
            .collect();
        kv.txn(Txn::new().and_then(ops)).await?;
    }

    // etcd's own rate on the same etcd, same concurrency, before citadel runs. Its keys stay
    // until the end: deleting 20,000 keys in one request would grow etcd 3.4's read buffer
    // to that many entries for good (its `reset` keeps the length; every `Txn` then copies all
    // of it): up to a fifth of etcd's cpu in the placement phase went to that copy and its GC.
    let raw_prefix = format!("{prefix}-raw/");
    let raw_total = args.requests.clamp(1_000, 20_000);
    let etcd_pid = _etcd_proc.as_ref().map(|p| p.pid());
    let etcd_cpu = || etcd_pid.and_then(proc_usage).map(|u| u.0);
    let raw_cpu0 = etcd_cpu();
    let own_cpu = || {
        proc_usage(std::process::id())
            .map(|u| u.0)
            .unwrap_or_default()
    };
    let raw_own_cpu0 = own_cpu();
    let raw_before = raw_put_rate(&conns, &raw_prefix, raw_total, args.clients).await?;
    let raw_put_per_s = raw_before.per_s;
    let raw_cpu = etcd_cpu().zip(raw_cpu0).map(|(b, a)| b - a);
    let raw_own_cpu = own_cpu() - raw_own_cpu0;
    eprintln!(
        "bench: raw single puts: {raw_put_per_s:.0}/s with {} clients",
        args.clients
    );

    // The real controller binary: a leader, then standbys.
    let exe = std::env::current_exe().map_err(|e| BenchError::Setup(e.to_string()))?;
    let spawn = |i: usize| -> Result<ChildProc, BenchError> {
        let mut cmd = Command::new(&exe);
        // Endpoints, TLS files and credentials go through the environment: a password in the
        // arguments would show in `ps`.
        etcd.pass_to_child(&mut cmd);
        cmd.args(["--prefix", &prefix, "controller"])
            .args(["--id", &format!("bench-{i}"), "--compact-every", "0"])
            .args(["--max-txn-ops", &args.max_txn_ops.to_string()])
            .args(["--nice", &args.nice.to_string()])
            // Several replicas on one host: none takes the default HTTP port.
            .args(["--listen", ""])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(w) = args.workers {
            cmd.args(["--workers", &w.to_string()]);
        }
        cmd.spawn()
            .map(ChildProc)
            .map_err(|e| BenchError::Setup(format!("start controller: {e}")))
    };
    let leader = spawn(0)?;
    let leader_key = format!("{}/", keys.leader());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = kv
            .get(
                leader_key.as_str(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?;
        if r.count() > 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(
                "the controller was not elected within 30 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut standbys = Vec::new();
    for i in 1..=args.replicas {
        standbys.push(spawn(i)?);
    }
    // Let the leader load the engines before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu0, rss0, _) = proc_usage(leader.pid()).unwrap_or_default();
    let etcd_cpu0 = etcd_cpu();
    let bench_cpu0 = own_cpu();

    let timings = Arc::new(Timings {
        start: Instant::now(),
        sent: (0..args.requests).map(|_| AtomicU64::new(0)).collect(),
        acked: (0..args.requests).map(|_| AtomicU64::new(0)).collect(),
        decided: (0..args.requests).map(|_| AtomicU64::new(0)).collect(),
        decided_count: AtomicUsize::new(0),
        placed: AtomicUsize::new(0),
    });

    // Decisions, watched from now on.
    let from = kv
        .get("/", Some(GetOptions::new().with_count_only()))
        .await?;
    let from = from.header().map(|h| h.revision()).unwrap_or(0) + 1;
    let mut watch = client
        .watch_client()
        .max_decoding_message_size(store::MAX_RESPONSE_BYTES)
        .watch(
            keys.decisions(),
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        )
        .await?;
    let watcher = {
        let timings = timings.clone();
        let decisions = keys.decisions();
        tokio::spawn(async move {
            while let Ok(Some(resp)) = watch.message().await {
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let Some(n) = kv
                        .key()
                        .strip_prefix(decisions.as_bytes())
                        .and_then(|id| std::str::from_utf8(id).ok())
                        .and_then(|id| id.strip_prefix('r'))
                        .and_then(|n| n.parse::<usize>().ok())
                    else {
                        continue;
                    };
                    let Some(slot) = timings.decided.get(n) else {
                        continue;
                    };
                    if slot.load(Ordering::Relaxed) == 0 && !kv.value().is_empty() {
                        slot.store(timings.now(), Ordering::Relaxed);
                        timings.decided_count.fetch_add(1, Ordering::Relaxed);
                        if memchr(kv.value(), br#""status":"placed""#) {
                            timings.placed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if timings.decided_count.load(Ordering::Relaxed) >= timings.decided.len() {
                    return;
                }
            }
        })
    };

    // Submitters.
    let next = Arc::new(AtomicUsize::new(0));
    let batch = args.submit_batch.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..args.clients {
        let mut kv = conns[c % conns.len()].kv_client();
        let (next, timings, keys) = (next.clone(), timings.clone(), keys.clone());
        let (total, rate) = (args.requests, args.rate);
        tasks.spawn(async move {
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= total {
                    return Ok::<(), etcd_client::Error>(());
                }
                let last = (first + batch).min(total);
                if let Some(rate) = rate {
                    let due = timings.start + Duration::from_secs_f64(first as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let now = timings.now();
                let mut ops = Vec::with_capacity(last - first);
                for n in first..last {
                    timings.sent[n].store(now, Ordering::Relaxed);
                    let id = RequestId::new(format!("r{n:07}")).expect("valid id");
                    ops.push((keys.request(&id), request_json(n)));
                }
                if ops.len() == 1 {
                    let (k, v) = ops.pop().expect("one op");
                    kv.put(k, v, None).await?;
                } else {
                    let ops: Vec<TxnOp> = ops
                        .into_iter()
                        .map(|(k, v)| TxnOp::put(k, v, None))
                        .collect();
                    kv.txn(Txn::new().and_then(ops)).await?;
                }
                let acked = timings.now();
                for slot in &timings.acked[first..last] {
                    slot.store(acked, Ordering::Relaxed);
                }
            }
        });
    }
    let progress = {
        let timings = timings.clone();
        let total = args.requests;
        tokio::spawn(async move {
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let mut last = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(if tty { 200 } else { 2_000 })).await;
                let done = timings.decided_count.load(Ordering::Relaxed);
                let secs = timings.start.elapsed().as_secs_f64().max(1e-9);
                let width = 30;
                let filled = width * done / total.max(1);
                let bar = format!("[{}{}]", "=".repeat(filled), " ".repeat(width - filled));
                let line = format!("{bar} {done}/{total} decided, {:.0}/s", done as f64 / secs);
                if tty {
                    eprint!("\r{line}");
                } else if last.elapsed() >= Duration::from_secs(2) {
                    eprintln!("bench: {line}");
                    last = Instant::now();
                }
                if done >= total {
                    if tty {
                        eprintln!();
                    }
                    return;
                }
            }
        })
    };
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| BenchError::Setup(e.to_string()))??;
    }
    let wait = tokio::time::timeout(Duration::from_secs(args.timeout), watcher).await;
    progress.abort();
    if wait.is_err() {
        eprintln!(
            "\nbench: gave up waiting for decisions after {} s",
            args.timeout
        );
    }
    let (cpu1, _, hwm) = proc_usage(leader.pid()).unwrap_or_default();
    let etcd_run_cpu = etcd_cpu().zip(etcd_cpu0).map(|(b, a)| b - a);
    let bench_cpu = own_cpu() - bench_cpu0;

    // Latencies and throughput, over decided requests.
    let mut lat = Vec::with_capacity(args.requests);
    let mut series = Vec::with_capacity(args.requests);
    let mut last_decision = 0u64;
    let mut first_sent = u64::MAX;
    for n in 0..args.requests {
        let s = timings.sent[n].load(Ordering::Relaxed);
        let d = timings.decided[n].load(Ordering::Relaxed);
        if s > 0 {
            first_sent = first_sent.min(s);
        }
        if s > 0 && d > 0 {
            let ms = d.saturating_sub(s) as f64 / 1e6;
            lat.push(ms);
            series.push((s as f64 / 1e9, ms));
            last_decision = last_decision.max(d);
        }
    }
    lat.sort_by(f64::total_cmp);
    let mut put_ms: Vec<f64> = timings
        .sent
        .iter()
        .zip(&timings.acked)
        .map(|(s, a)| (s.load(Ordering::Relaxed), a.load(Ordering::Relaxed)))
        .filter(|(s, a)| *s > 0 && *a >= *s)
        .map(|(s, a)| (a - s) as f64 / 1e6)
        .collect();
    put_ms.sort_by(f64::total_cmp);
    let span = (last_decision.saturating_sub(first_sent.min(last_decision))) as f64 / 1e9;
    let decided = lat.len();
    let placed_seen = timings.placed.load(Ordering::Relaxed);

    // The invariants, from etcd itself.
    let report: Report = invariants::check_etcd(&client, &keys, 1.0).await?;
    drop(standbys);
    drop(leader);
    // etcd's rate again, after: this machine's disk and neighbours drift during a run, so the
    // ratio uses the mean of the two measurements around it.
    let raw_after = raw_put_rate(&conns, &raw_prefix, raw_total, args.clients).await?;
    let raw_put_p50_ms = (raw_before.p50_ms + raw_after.p50_ms) / 2.0;
    let raw_after = raw_after.per_s;
    let _ = kv
        .delete(
            raw_prefix.as_str(),
            Some(DeleteOptions::new().with_prefix()),
        )
        .await;
    eprintln!("bench: raw single puts after: {raw_after:.0}/s");
    let raw_put_per_s = (raw_put_per_s + raw_after) / 2.0;
    if let Some(path) = &args.plot
        && let Err(e) = plot(path, &series, &lat)
    {
        eprintln!("bench: could not draw {}: {e}", path.display());
    }
    // Leave no trace on a shared etcd.
    let _ = kv
        .delete(keys.root(), Some(DeleteOptions::new().with_prefix()))
        .await;

    let placements_per_s = if span > 0.0 {
        placed_seen as f64 / span
    } else {
        0.0
    };
    Ok(BenchResult {
        engines: args.engines,
        requests: args.requests,
        clients: args.clients,
        submit_batch: batch,
        replicas: args.replicas,
        controller_nice: args.nice,
        offered_rate: args.rate,
        placed: report.placed,
        unschedulable: report.unschedulable,
        invalid: report.invalid,
        undecided: args.requests.saturating_sub(decided),
        placements_per_s,
        decisions_per_s: if span > 0.0 {
            decided as f64 / span
        } else {
            0.0
        },
        raw_put_per_s,
        ratio: placements_per_s / raw_put_per_s.max(1e-9),
        p50_ms: percentile(&lat, 0.50),
        put_p50_ms: percentile(&put_ms, 0.50),
        raw_put_p50_ms,
        p90_ms: percentile(&lat, 0.90),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(0.0),
        controller_cpu_s: cpu1 - cpu0,
        controller_cpu_us_per_placement: (cpu1 - cpu0) * 1e6 / (report.placed.max(1) as f64),
        controller_rss_mb: hwm,
        controller_rss_base_mb: rss0,
        controller_bytes_per_placement: (hwm - rss0).max(0.0) * 1024.0 * 1024.0
            / (report.placed.max(1) as f64),
        etcd_cpu_s_per_1k_raw_puts: raw_cpu.map(|c| c * 1000.0 / raw_total as f64),
        etcd_cpu_s_per_1k_placements: etcd_run_cpu
            .map(|c| c * 1000.0 / report.placed.max(1) as f64),
        bench_cpu_s: bench_cpu,
        bench_cpu_s_per_1k_raw_puts: raw_own_cpu * 1000.0 / raw_total as f64,
        bench_cpu_s_per_1k_placements: bench_cpu * 1000.0 / report.placed.max(1) as f64,
        overcommitted_engines: report.overcommitted_engines.len(),
        double_bound_ports: report.double_bound_ports.len(),
        mismatched: report.mismatched.len(),
        duplicate_or_missing_decisions: report.decided.abs_diff(args.requests),
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// Whether `needle` occurs in `haystack`: candidates are found by their first byte (a
/// decision has about 40 quotes in 400 bytes), rather than comparing at every offset.
fn memchr(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    haystack
        .iter()
        .enumerate()
        .filter(|&(_, &b)| b == first)
        .any(|(i, _)| haystack[i + 1..].starts_with(rest))
}

/// The human table.
pub fn print_table(r: &BenchResult) {
    let rate = r
        .offered_rate
        .map(|x| format!("{x:.0}/s offered"))
        .unwrap_or_else(|| "as fast as possible".into());
    println!(
        "citadel bench: {} engines, {} requests, {} clients, submit batch {}, {} standby(s), {rate}, controller nice {}",
        r.engines, r.requests, r.clients, r.submit_batch, r.replicas, r.controller_nice
    );
    println!(
        "  decided            {:>10}  (placed {}, unschedulable {}, invalid {}, undecided {})",
        r.requests - r.undecided,
        r.placed,
        r.unschedulable,
        r.invalid,
        r.undecided
    );
    println!("  placements/s       {:>10.0}", r.placements_per_s);
    println!(
        "  raw etcd puts/s    {:>10.0}  (same etcd, same concurrency)",
        r.raw_put_per_s
    );
    println!("  ratio              {:>10.3}", r.ratio);
    println!(
        "  users' put ms      {:>10.2}  p50 while citadel runs ({:.2} in the raw measurement)",
        r.put_p50_ms, r.raw_put_p50_ms
    );
    println!(
        "  latency ms         {:>10}  p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        "", r.p50_ms, r.p90_ms, r.p99_ms, r.max_ms
    );
    println!(
        "  controller cpu     {:>10.2} s  ({:.1} us per placement)",
        r.controller_cpu_s, r.controller_cpu_us_per_placement
    );
    println!(
        "  controller rss     {:>10.1} MB peak  ({:.1} MB at start, {:.0} B per placement)",
        r.controller_rss_mb, r.controller_rss_base_mb, r.controller_bytes_per_placement
    );
    if let (Some(raw), Some(run)) = (r.etcd_cpu_s_per_1k_raw_puts, r.etcd_cpu_s_per_1k_placements) {
        println!(
            "  etcd cpu           {raw:>10.3} s per 1k raw puts, {run:.3} s per 1k placements"
        );
    }
    println!(
        "  bench cpu          {:>10.2} s  (submitters and decision watcher): {:.3} s per 1k raw puts, {:.3} s per 1k placements",
        r.bench_cpu_s, r.bench_cpu_s_per_1k_raw_puts, r.bench_cpu_s_per_1k_placements
    );
    println!(
        "  invariants         overcommitted engines {}, double-bound ports {}, mismatched {}, missing/duplicate decisions {}",
        r.overcommitted_engines,
        r.double_bound_ports,
        r.mismatched,
        r.duplicate_or_missing_decisions
    );
    println!("  wall time          {:>10.1} s", r.elapsed_s);
}

fn plot(
    path: &std::path::Path,
    series: &[(f64, f64)],
    sorted: &[f64],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);
    let max_t = series.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-3);
    let max_ms = sorted.last().copied().unwrap_or(1.0).max(1e-3);
    let mut chart = ChartBuilder::on(&top)
        .caption("latency by submit time", ("sans-serif", 20))
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
    let mut cdf = ChartBuilder::on(&bottom)
        .caption("latency distribution (CDF)", ("sans-serif", 20))
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
        &RED,
    ))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::memchr;

    #[test]
    fn finds_a_needle_anywhere_and_only_whole() {
        let placed = br#""status":"placed""#;
        assert!(memchr(
            br#"{"a":"\"status","status":"placed","x":1}"#,
            placed
        ));
        assert!(memchr(br#""status":"placed""#, placed));
        assert!(!memchr(
            br#"{"status":"placed_not"}"#,
            br#""status":"placed_x"#
        ));
        assert!(!memchr(br#"{"status":"unschedulable"}"#, placed));
        assert!(!memchr(br#""status":"place"#, placed));
        assert!(!memchr(b"", placed));
        assert!(memchr(b"abc", b""));
    }
}
