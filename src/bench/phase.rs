//! One measured phase: submitters put the requests (one put each, or `--submit-batch` per
//! transaction, as fast as possible or at `--rate`), a watch times each request from its put to
//! its decision, and what was seen is summed up. Whoever decides (the real controller, or the
//! floor's minimal writer) is started before and stopped after.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, Txn, TxnOp, WatchOptions};

use super::timeline::{self, Sampler, Sources, Throughput};
use super::workload::{percentile, request_json};
use super::{BenchArgs, BenchError};
use crate::keys::Keys;
use crate::model::RequestId;
use crate::store::{self, EtcdConfig};

pub(super) struct Timings {
    start: Instant,
    /// The batch: how its request ids are spelt and which decision is the one awaited.
    batch: Batch,
    sent: Vec<AtomicU64>,
    /// When etcd answered the request's put.
    acked: Vec<AtomicU64>,
    decided: Vec<AtomicU64>,
    decided_count: AtomicUsize,
    placed: AtomicUsize,
    /// When an agent reported the request `running` (`--agents --launch`).
    running: Vec<AtomicU64>,
    running_count: AtomicUsize,
    /// The most revisions the decision watch was behind etcd since the sampler last looked
    /// (-1: no response since).
    watch_lag: Arc<AtomicI64>,
}

impl Timings {
    fn new(requests: usize, batch: Batch) -> Arc<Timings> {
        Arc::new(Timings {
            start: Instant::now(),
            batch,
            sent: (0..requests).map(|_| AtomicU64::new(0)).collect(),
            acked: (0..requests).map(|_| AtomicU64::new(0)).collect(),
            decided: (0..requests).map(|_| AtomicU64::new(0)).collect(),
            decided_count: AtomicUsize::new(0),
            placed: AtomicUsize::new(0),
            running: (0..requests).map(|_| AtomicU64::new(0)).collect(),
            running_count: AtomicUsize::new(0),
            watch_lag: Arc::new(AtomicI64::new(-1)),
        })
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64 + 1
    }

    /// The batch's request number of `id`, if it is one of the batch's.
    pub(super) fn number(&self, id: &str) -> Option<usize> {
        self.batch.number(id, self.sent.len())
    }

    /// An agent reported request `id` running; the first report counts.
    pub(super) fn note_running(&self, id: &str) {
        if let Some(slot) = self.number(id).map(|n| &self.running[n])
            && slot
                .compare_exchange(0, self.now(), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.running_count.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn running_count(&self) -> usize {
        self.running_count.load(Ordering::Relaxed)
    }
}

/// Which requests a phase submits: ids `<tag><n:07>` (a gang's `g<k>-<m>`), asked to be
/// launched or not, of the default mix or of a scenario's shape.
#[derive(Debug, Clone, Copy)]
pub(super) struct Batch {
    pub(super) tag: char,
    pub(super) launch: bool,
    pub(super) shape: Shape,
    /// How many: `--requests` when `None`.
    pub(super) count: Option<usize>,
}

/// What a batch's requests ask for, and which of their decisions the phase waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// [`request_json`]'s mix; the first decision of any status counts.
    Mix,
    /// 1 cpu and 1024 MB at this priority; the phase waits for each to be placed.
    Slot { priority: i32 },
    /// 1 cpu and 1024 MB, in gangs of `size` (`"group":"g<k>","group_min":size`), members
    /// of `window` gangs at a time interleaved; the first decision other than `pending` counts.
    Gang { size: usize, window: usize },
}

impl Batch {
    /// `r0000000`…, not launched: the bench's default.
    pub(super) const PLAIN: Batch = Batch {
        tag: 'r',
        launch: false,
        shape: Shape::Mix,
        count: None,
    };
    /// `l0000000`…, each with `"launch":true`.
    pub(super) const LAUNCHED: Batch = Batch {
        tag: 'l',
        launch: true,
        shape: Shape::Mix,
        count: None,
    };

    pub(super) fn id(&self, n: usize) -> RequestId {
        let id = match self.gang_member(n) {
            Some((k, m)) => format!("{}{k}-{m}", self.tag),
            None => format!("{}{n:07}", self.tag),
        };
        RequestId::new(id).expect("valid id")
    }

    pub(super) fn json(&self, n: usize) -> String {
        let mut json = match self.shape {
            Shape::Mix => request_json(n),
            Shape::Slot { priority } => format!(
                r#"{{"image":"bench/slot:{}","cpus":1,"memory":1024,"type":"service","priority":{priority}}}"#,
                n % 100
            ),
            Shape::Gang { size, .. } => {
                let (k, _) = self.gang_member(n).expect("a gang's member");
                format!(
                    r#"{{"image":"bench/gang:{}","cpus":1,"memory":1024,"type":"service","group":"{}{k}","group_min":{size}}}"#,
                    k % 100,
                    self.tag
                )
            }
        };
        if self.launch {
            json.pop();
            json.push_str(r#","launch":true}"#);
        }
        json
    }

    /// The request number of `id` among `count`, if it is one of the batch's.
    pub(super) fn number(&self, id: &str, count: usize) -> Option<usize> {
        let rest = id.strip_prefix(self.tag)?;
        let n = match self.shape {
            Shape::Gang { size, window } => {
                let (k, m) = rest.split_once('-')?;
                let (k, m) = (k.parse::<usize>().ok()?, m.parse::<usize>().ok()?);
                if m >= size || k >= count / size.max(1) {
                    return None;
                }
                gang_position(k, m, size, window, count / size)
            }
            _ => rest.parse::<usize>().ok()?,
        };
        (n < count).then_some(n)
    }

    /// Request `n` of a gang batch: gang `k`, member `m`.
    pub(super) fn gang_member(&self, n: usize) -> Option<(usize, usize)> {
        let Shape::Gang { size, window } = self.shape else {
            return None;
        };
        let gangs = self.count? / size;
        let window = window.max(1);
        let block = n / (window * size);
        let in_block = window.min(gangs.saturating_sub(block * window)).max(1);
        let i = n - block * window * size;
        Some((block * window + i % in_block, i / in_block))
    }
}

/// Where member `m` of gang `k` is submitted: members of `window` gangs at a time, member 0
/// of each, then member 1 of each, and so on.
fn gang_position(k: usize, m: usize, size: usize, window: usize, gangs: usize) -> usize {
    let window = window.max(1);
    let block = k / window;
    let in_block = window.min(gangs.saturating_sub(block * window)).max(1);
    block * window * size + m * in_block + (k - block * window)
}

/// What a phase saw.
pub(super) struct Seen {
    /// put -> decision, ms, sorted.
    pub(super) latencies: Vec<f64>,
    /// (seconds since start, ms) per decided request, in request order.
    pub(super) series: Vec<(f64, f64)>,
    /// The users' own puts, send to etcd's answer, ms, sorted.
    pub(super) put_ms: Vec<f64>,
    /// From the first put to the last decision, seconds.
    pub(super) span_s: f64,
    /// Decisions seen with `"status":"placed"`.
    pub(super) placed: usize,
    /// Requests whose awaited decision was seen (the latencies' count, unless a scenario
    /// replaces those with its own).
    pub(super) decided: usize,
    /// A scenario batch's (sent, awaited decision) per request, ns since the phase began (0:
    /// never); empty for the default mix.
    pub(super) times: Vec<(u64, u64)>,
    /// put -> `running` report of an agent, ms, sorted (`--agents --launch`).
    pub(super) running_ms: Vec<f64>,
    /// Decisions per 10-second window, with what etcd and the leader showed meanwhile.
    pub(super) throughput: Throughput,
}

impl Seen {
    pub(super) fn decided(&self) -> usize {
        self.decided
    }

    pub(super) fn per_s(&self, n: usize) -> f64 {
        if self.span_s > 0.0 {
            n as f64 / self.span_s
        } else {
            0.0
        }
    }

    pub(super) fn p(&self, p: f64) -> f64 {
        percentile(&self.latencies, p)
    }
}

/// Submits the run's requests under `keys` and waits (up to `--timeout`) until each one's
/// decision was seen. `leader` is the leader's HTTP address, when it listens: its cache's lag
/// is sampled beside etcd's figures.
pub(super) async fn run(
    etcd: &EtcdConfig,
    conns: &[Client],
    keys: &Keys,
    args: &BenchArgs,
    batch: Batch,
    agents: Option<&super::agents::HollowFleet>,
    leader: Option<&str>,
) -> Result<Seen, BenchError> {
    let total = batch.count.unwrap_or(args.requests);
    let timings = Timings::new(total, batch);
    if let Some(fleet) = agents {
        fleet.observe(&timings);
    }
    let from = conns[0]
        .kv_client()
        .get("/", Some(GetOptions::new().with_count_only()))
        .await?
        .header()
        .map_or(0, |h| h.revision())
        + 1;
    let watcher = Watcher::start(etcd, keys, &timings, from).await?;
    let sampler = Sampler::start(
        Sources {
            etcd: etcd.endpoints.clone(),
            leader: leader.map(str::to_string),
        },
        timings.watch_lag.clone(),
    );
    let mut submitters = submit(conns, keys, args, batch, &timings);
    let progress = show_progress(&timings, total, args.quiet_progress);
    while let Some(r) = submitters.join_next().await {
        r.map_err(|e| BenchError::Setup(e.to_string()))??;
    }
    let wait = tokio::time::timeout(Duration::from_secs(args.timeout), watcher.done).await;
    progress.abort();
    drop(watcher.stop);
    if wait.is_err() {
        eprintln!(
            "\nbench: gave up waiting for decisions after {} s",
            args.timeout
        );
    }
    let samples = sampler.finish().await;
    if batch.launch && agents.is_some() {
        wait_for_running(&timings, Duration::from_secs(args.timeout)).await;
    }
    Ok(summarize(&timings, &samples))
}

/// Waits until the agents reported as many requests running as were placed, while reports keep
/// coming (at most 10 s without a new one, and `limit` in all).
async fn wait_for_running(timings: &Timings, limit: Duration) {
    let deadline = Instant::now() + limit;
    let (mut last, mut since) = (timings.running_count(), Instant::now());
    while timings.running_count() < timings.placed.load(Ordering::Relaxed)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = timings.running_count();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "bench: {} of {} placed requests reported running; no report for 10 s",
                now,
                timings.placed.load(Ordering::Relaxed)
            );
            return;
        }
    }
}

/// The decision watch, on a thread, a runtime and a connection of its own: a watcher that the
/// submitters starve of cpu falls behind, and etcd then serves it from its backend instead of
/// from memory, which slows everyone else as well (seen at a million requests).
struct Watcher {
    /// Resolves when every request's decision was seen (or the watch ended).
    done: tokio::sync::oneshot::Receiver<()>,
    /// Dropped to stop the watch.
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Watcher {
    /// Returns once the watch is open, from revision `from` on.
    async fn start(
        etcd: &EtcdConfig,
        keys: &Keys,
        timings: &Arc<Timings>,
        from: i64,
    ) -> Result<Watcher, BenchError> {
        let (ready_tx, ready) = tokio::sync::oneshot::channel::<Result<(), String>>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (etcd, decisions, timings) = (etcd.clone(), keys.decisions(), timings.clone());
        let thread = std::thread::Builder::new()
            .name("bench-watch".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let opened = async {
                        let client = store::connect(&etcd, Some(Duration::from_secs(10))).await?;
                        let watch = client
                            .watch_client()
                            .max_decoding_message_size(store::MAX_RESPONSE_BYTES)
                            .watch(
                                decisions.as_str(),
                                Some(WatchOptions::new().with_prefix().with_start_revision(from)),
                            )
                            .await?;
                        Ok::<_, BenchError>((client, watch))
                    };
                    let (_client, mut watch) = match opened.await {
                        Ok(w) => w,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    tokio::select! {
                        () = follow(&mut watch, &decisions, &timings) => {}
                        _ = &mut stopped => {}
                    }
                    let _ = done_tx.send(());
                });
            });
        if let Err(e) = thread {
            return Err(BenchError::Setup(format!("start the decision watch: {e}")));
        }
        match ready.await {
            Ok(Ok(())) => Ok(Watcher { done, stop }),
            Ok(Err(e)) => Err(BenchError::Setup(format!("the decision watch: {e}"))),
            Err(_) => Err(BenchError::Setup("the decision watch ended at once".into())),
        }
    }
}

/// Records when each request's first decision arrives, until every one has.
async fn follow(watch: &mut etcd_client::WatchStream, decisions: &str, timings: &Timings) {
    let placed = memchr::memmem::Finder::new(br#""status":"placed""#);
    let pending = memchr::memmem::Finder::new(br#""status":"pending""#);
    while let Ok(Some(resp)) = watch.message().await {
        // How far behind etcd this watch is: etcd's revision when it sent the response, over
        // the newest event in it (an unsynced watcher is served old events from the backend).
        if let (Some(h), Some(newest)) = (
            resp.header(),
            resp.events()
                .iter()
                .filter_map(|ev| ev.kv().map(|kv| kv.mod_revision()))
                .max(),
        ) {
            timings
                .watch_lag
                .fetch_max((h.revision() - newest).max(0), Ordering::Relaxed);
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Some(n) = kv
                .key()
                .strip_prefix(decisions.as_bytes())
                .and_then(|id| std::str::from_utf8(id).ok())
                .and_then(|id| timings.number(id))
            else {
                continue;
            };
            let slot = &timings.decided[n];
            if slot.load(Ordering::Relaxed) == 0 && !kv.value().is_empty() {
                let is_placed = placed.find(kv.value()).is_some();
                let awaited = match timings.batch.shape {
                    Shape::Mix => true,
                    Shape::Slot { .. } => is_placed,
                    Shape::Gang { .. } => pending.find(kv.value()).is_none(),
                };
                if !awaited {
                    continue;
                }
                slot.store(timings.now(), Ordering::Relaxed);
                timings.decided_count.fetch_add(1, Ordering::Relaxed);
                if is_placed {
                    timings.placed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if timings.decided_count.load(Ordering::Relaxed) >= timings.decided.len() {
            return;
        }
    }
}

/// Starts `--clients` submitters sharing the requests.
fn submit(
    conns: &[Client],
    keys: &Keys,
    args: &BenchArgs,
    which: Batch,
    timings: &Arc<Timings>,
) -> tokio::task::JoinSet<Result<(), etcd_client::Error>> {
    let next = Arc::new(AtomicUsize::new(0));
    let batch = args.submit_batch.max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..args.clients {
        let mut kv = conns[c % conns.len()].kv_client();
        let (next, timings, keys) = (next.clone(), timings.clone(), keys.clone());
        let (total, rate) = (which.count.unwrap_or(args.requests), args.rate);
        tasks.spawn(async move {
            loop {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= total {
                    return Ok(());
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
                    ops.push((keys.request(&which.id(n)), which.json(n)));
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
    tasks
}

/// A bar on a terminal; elsewhere (a log, CI) one line per tenth of the requests decided;
/// nothing with `--quiet-progress`.
fn show_progress(timings: &Arc<Timings>, total: usize, quiet: bool) -> tokio::task::JoinHandle<()> {
    let timings = timings.clone();
    tokio::spawn(async move {
        if quiet {
            return;
        }
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut tenths_shown = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(if tty { 200 } else { 1_000 })).await;
            let done = timings.decided_count.load(Ordering::Relaxed);
            let secs = timings.start.elapsed().as_secs_f64().max(1e-9);
            let width = 30;
            let filled = width * done / total.max(1);
            let bar = format!("[{}{}]", "=".repeat(filled), " ".repeat(width - filled));
            let line = format!("{bar} {done}/{total} decided, {:.0}/s", done as f64 / secs);
            let tenths = 10 * done / total.max(1);
            if tty {
                eprint!("\r{line}");
            } else if tenths > tenths_shown {
                eprintln!("bench: {line}");
                tenths_shown = tenths;
            }
            if done >= total {
                if tty {
                    eprintln!();
                }
                return;
            }
        }
    })
}

fn summarize(timings: &Timings, samples: &[timeline::Sample]) -> Seen {
    let n = timings.sent.len();
    let mut latencies = Vec::with_capacity(n);
    let mut series = Vec::with_capacity(n);
    let mut last_decision = 0u64;
    let mut first_sent = u64::MAX;
    for i in 0..n {
        let s = timings.sent[i].load(Ordering::Relaxed);
        let d = timings.decided[i].load(Ordering::Relaxed);
        if s > 0 {
            first_sent = first_sent.min(s);
        }
        if s > 0 && d > 0 {
            let ms = d.saturating_sub(s) as f64 / 1e6;
            latencies.push(ms);
            series.push((s as f64 / 1e9, ms));
            last_decision = last_decision.max(d);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let mut put_ms: Vec<f64> = timings
        .sent
        .iter()
        .zip(&timings.acked)
        .map(|(s, a)| (s.load(Ordering::Relaxed), a.load(Ordering::Relaxed)))
        .filter(|(s, a)| *s > 0 && *a >= *s)
        .map(|(s, a)| (a - s) as f64 / 1e6)
        .collect();
    put_ms.sort_by(f64::total_cmp);
    let mut running_ms: Vec<f64> = timings
        .sent
        .iter()
        .zip(&timings.running)
        .map(|(s, r)| (s.load(Ordering::Relaxed), r.load(Ordering::Relaxed)))
        .filter(|(s, r)| *s > 0 && *r >= *s)
        .map(|(s, r)| (r - s) as f64 / 1e6)
        .collect();
    running_ms.sort_by(f64::total_cmp);
    let times = match timings.batch.shape {
        Shape::Mix => Vec::new(),
        _ => (0..n)
            .map(|i| {
                (
                    timings.sent[i].load(Ordering::Relaxed),
                    timings.decided[i].load(Ordering::Relaxed),
                )
            })
            .collect(),
    };
    let decided_at: Vec<Duration> = timings
        .decided
        .iter()
        .map(|d| d.load(Ordering::Relaxed))
        .filter(|d| *d > 0)
        .map(Duration::from_nanos)
        .collect();
    let throughput = timeline::windows(
        timings.start,
        Duration::from_nanos(first_sent.min(last_decision)),
        &decided_at,
        samples,
    );
    Seen {
        throughput,
        decided: latencies.len(),
        times,
        latencies,
        series,
        put_ms,
        span_s: (last_decision.saturating_sub(first_sent.min(last_decision))) as f64 / 1e9,
        placed: timings.placed.load(Ordering::Relaxed),
        running_ms,
    }
}
