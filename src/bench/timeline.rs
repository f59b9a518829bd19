//! Throughput over time: the decisions of a run counted per 10-second window, and beside each
//! window what etcd and the leader showed meanwhile, so that a run that fell into a slow mode
//! says so (`throughput.slow_mode`) and shows why (slow watchers, a watch that fell behind,
//! slower commits).
//!
//! The counts come from the decision watch's own timestamps; the figures beside them from a
//! sampler that reads etcd's `/metrics` (plain http endpoints only), the leader's `/metrics`
//! (`citadel_cache_lag_revisions`) and how far behind the bench's decision watch is.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::agents::EtcdCounters;

/// The width of a window.
pub(super) const WINDOW: Duration = Duration::from_secs(10);
/// A run whose slowest whole window decides less than this fraction of its median window fell
/// into a slow mode.
pub const SLOW_MODE_BELOW: f64 = 0.7;
/// How often the sampler reads etcd's and the leader's figures.
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// One whole window of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// Seconds from the run's first put to the window's start.
    pub start_s: f64,
    pub decisions: usize,
    pub decisions_per_s: f64,
    /// etcd's puts per second (its `etcd_mvcc_put_total`, of the first member read).
    pub etcd_puts_per_s: Option<f64>,
    /// The most watchers etcd served from its backend instead of from memory at any sample
    /// (`etcd_debugging_mvcc_slow_watcher_total`, summed over the members read).
    pub etcd_slow_watchers: Option<f64>,
    /// The mean time of one backend commit (`etcd_disk_backend_commit_duration_seconds`).
    pub etcd_commit_ms: Option<f64>,
    /// Batches of a compaction etcd ran in the window (a thousand keys scanned each; its
    /// `etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds`): 0 when none ran.
    pub etcd_compaction_batches: Option<f64>,
    /// The most revisions the leader's cache was behind etcd at any sample.
    pub leader_cache_lag: Option<f64>,
    /// The most revisions the bench's decision watch was behind etcd (a response's header
    /// revision minus its newest event's).
    pub decision_watch_lag: Option<i64>,
}

/// Decisions per window over a run (`throughput` in the JSON).
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub window_s: f64,
    /// Every whole window from the first put on (the last, partial one left out).
    pub windows: Vec<Window>,
    pub median_per_s: Option<f64>,
    pub slowest_per_s: Option<f64>,
    /// The slowest window over the median one: below [`SLOW_MODE_BELOW`], a slow mode.
    pub slowest_over_median: Option<f64>,
    pub slow_mode: bool,
}

/// What the sampler read once.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    at: Instant,
    etcd: Vec<EtcdCounters>,
    leader: Option<EtcdCounters>,
    /// The decision watch's most revisions behind since the sample before.
    watch_lag: Option<i64>,
}

/// Where the sampler reads.
#[derive(Debug, Clone, Default)]
pub(super) struct Sources {
    /// etcd's client endpoints (`http://…`; https ones are skipped).
    pub(super) etcd: Vec<String>,
    /// The leader's HTTP address (`http://127.0.0.1:PORT`), when it listens.
    pub(super) leader: Option<String>,
}

/// Reads the sources every [`SAMPLE_EVERY`] until stopped.
pub(super) struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    pub(super) fn start(sources: Sources, watch_lag: Arc<AtomicI64>) -> Sampler {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => break,
                }
                samples.push(read(&sources, &watch_lag).await);
            }
            samples.push(read(&sources, &watch_lag).await);
            samples
        });
        Sampler { stop, task }
    }

    /// Stops the sampler; what it read (empty if its task failed).
    pub(super) async fn finish(self) -> Vec<Sample> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(samples) => samples,
            Err(e) => {
                eprintln!("bench: the sampler of etcd's and the leader's figures failed: {e}");
                Vec::new()
            }
        }
    }
}

async fn read(sources: &Sources, watch_lag: &AtomicI64) -> Sample {
    let mut etcd = Vec::new();
    for e in &sources.etcd {
        if let Some(c) = EtcdCounters::read(e).await {
            etcd.push(c);
        }
    }
    let leader = match &sources.leader {
        Some(addr) => EtcdCounters::read(addr).await,
        None => None,
    };
    let lag = watch_lag.swap(-1, Ordering::Relaxed);
    Sample {
        at: Instant::now(),
        etcd,
        leader,
        watch_lag: (lag >= 0).then_some(lag),
    }
}

/// The windows of a run whose decisions came at `decided` (time since `start`, any order),
/// its first put at `first`, with `samples` beside them.
pub(super) fn windows(
    start: Instant,
    first: Duration,
    decided: &[Duration],
    samples: &[Sample],
) -> Throughput {
    let width = WINDOW.as_secs_f64();
    let last = decided.iter().max().copied().unwrap_or(first);
    let whole = (last.saturating_sub(first).as_secs_f64() / width).floor() as usize;
    let mut counts = vec![0usize; whole];
    for d in decided {
        let i = (d.saturating_sub(first).as_secs_f64() / width).floor() as usize;
        if let Some(c) = counts.get_mut(i) {
            *c += 1;
        }
    }
    let windows: Vec<Window> = counts
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let from = start + first + WINDOW * i as u32;
            let beside = Beside::of(samples, from, from + WINDOW);
            Window {
                start_s: (WINDOW * i as u32).as_secs_f64(),
                decisions: n,
                decisions_per_s: n as f64 / width,
                etcd_puts_per_s: beside.etcd_rate("etcd_mvcc_put_total", true),
                etcd_slow_watchers: beside.etcd_max("etcd_debugging_mvcc_slow_watcher_total"),
                etcd_commit_ms: beside.commit_ms(),
                etcd_compaction_batches: beside.etcd_rate(
                    "etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds_count",
                    false,
                ),
                leader_cache_lag: beside.leader_max("citadel_cache_lag_revisions"),
                decision_watch_lag: beside.samples.iter().filter_map(|s| s.watch_lag).max(),
            }
        })
        .collect();
    summarize(width, windows)
}

fn summarize(width: f64, windows: Vec<Window>) -> Throughput {
    let mut rates: Vec<f64> = windows.iter().map(|w| w.decisions_per_s).collect();
    rates.sort_by(f64::total_cmp);
    let median = (!rates.is_empty()).then(|| {
        let mid = rates.len() / 2;
        if rates.len() % 2 == 1 {
            rates[mid]
        } else {
            (rates[mid - 1] + rates[mid]) / 2.0
        }
    });
    let slowest = rates.first().copied();
    let ratio = median
        .zip(slowest)
        .map(|(m, s)| if m > 0.0 { s / m } else { 1.0 });
    Throughput {
        window_s: width,
        windows,
        median_per_s: median,
        slowest_per_s: slowest,
        slowest_over_median: ratio,
        slow_mode: ratio.is_some_and(|r| r < SLOW_MODE_BELOW),
    }
}

/// The samples that fall in one window, with the one just before it (a rate needs both ends).
struct Beside<'a> {
    before: Option<&'a Sample>,
    samples: Vec<&'a Sample>,
}

impl<'a> Beside<'a> {
    fn of(samples: &'a [Sample], from: Instant, to: Instant) -> Beside<'a> {
        Beside {
            before: samples.iter().rev().find(|s| s.at < from),
            samples: samples
                .iter()
                .filter(|s| s.at >= from && s.at < to)
                .collect(),
        }
    }

    fn ends(&self) -> Option<(&'a Sample, &'a Sample)> {
        let last = *self.samples.last()?;
        let first = self.before.or_else(|| self.samples.first().copied())?;
        (last.at > first.at).then_some((first, last))
    }

    /// `name`'s growth over the window, per second (`per_s`), or in all (`false`).
    fn etcd_rate(&self, name: &str, per_s: bool) -> Option<f64> {
        let (a, b) = self.ends()?;
        let secs = if per_s {
            (b.at - a.at).as_secs_f64()
        } else {
            1.0
        };
        a.etcd.first()?.rate(b.etcd.first()?, name, secs)
    }

    fn etcd_max(&self, name: &str) -> Option<f64> {
        self.samples
            .iter()
            .filter(|s| !s.etcd.is_empty())
            .filter_map(|s| s.etcd.iter().map(|c| c.get(name)).sum::<Option<f64>>())
            .reduce(f64::max)
    }

    fn leader_max(&self, name: &str) -> Option<f64> {
        self.samples
            .iter()
            .filter_map(|s| s.leader.as_ref()?.get(name))
            .reduce(f64::max)
    }

    fn commit_ms(&self) -> Option<f64> {
        let (a, b) = self.ends()?;
        let (a, b) = (a.etcd.first()?, b.etcd.first()?);
        let n = a.rate(b, "etcd_disk_backend_commit_duration_seconds_count", 1.0)?;
        let s = a.rate(b, "etcd_disk_backend_commit_duration_seconds_sum", 1.0)?;
        (n > 0.0).then(|| 1000.0 * s / n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_windows_only_and_the_slowest_against_the_median() {
        let start = Instant::now();
        let first = Duration::from_secs(1);
        // 35 s from the first put: three whole windows of 100, 40 and 100 decisions, and 5
        // more in the partial fourth one.
        let mut decided = Vec::new();
        for (from, n) in [(1.0, 100), (11.0, 40), (21.0, 100), (31.0, 5)] {
            for k in 0..n {
                decided.push(Duration::from_secs_f64(from + 9.9 * k as f64 / n as f64));
            }
        }
        decided.push(Duration::from_secs(36));
        let t = windows(start, first, &decided, &[]);
        let counts: Vec<usize> = t.windows.iter().map(|w| w.decisions).collect();
        assert_eq!(counts, vec![100, 40, 100]);
        assert_eq!(t.median_per_s, Some(10.0));
        assert_eq!(t.slowest_per_s, Some(4.0));
        assert_eq!(t.slowest_over_median, Some(0.4));
        assert!(t.slow_mode);
        assert_eq!(t.windows[1].start_s, 10.0);
    }

    #[test]
    fn each_window_shows_what_etcd_and_the_leader_showed_meanwhile() {
        let start = Instant::now();
        let sample = |secs: f64, puts: f64, slow: f64, lag: f64, commits: (f64, f64)| Sample {
            at: start + Duration::from_secs_f64(secs),
            etcd: vec![EtcdCounters::parse(&format!(
                "# HELP x\netcd_mvcc_put_total {puts}\netcd_debugging_mvcc_slow_watcher_total {slow}\n\
                 etcd_disk_backend_commit_duration_seconds_count {}\n\
                 etcd_disk_backend_commit_duration_seconds_sum {}\n\
                 etcd_debugging_mvcc_db_compaction_pause_duration_milliseconds_count {}\n",
                commits.0,
                commits.1,
                // A compaction runs from 10 s to 15 s: 80 batches a second.
                80.0 * (secs.clamp(10.0, 15.0) - 10.0)
            ))],
            leader: Some(EtcdCounters::parse(&format!(
                "citadel_cache_lag_revisions {lag}\n"
            ))),
            watch_lag: Some(lag as i64 / 2),
        };
        let samples = vec![
            sample(0.5, 0.0, 0.0, 3.0, (0.0, 0.0)),
            sample(5.0, 45_000.0, 0.0, 10.0, (100.0, 0.5)),
            sample(10.0, 90_000.0, 1.0, 4_000.0, (200.0, 1.0)),
            sample(15.0, 110_000.0, 1.0, 9_000.0, (300.0, 4.5)),
            sample(20.5, 130_000.0, 0.0, 20.0, (400.0, 7.0)),
        ];
        let decided: Vec<Duration> = (0..=210).map(|k| Duration::from_millis(k * 100)).collect();
        let t = windows(start, Duration::ZERO, &decided, &samples);
        assert_eq!(t.windows.len(), 2);
        let (w0, w1) = (&t.windows[0], &t.windows[1]);
        // From the sample at 0.5 s to the one at 5 s: 45,000 puts in 4.5 s.
        assert_eq!(w0.etcd_puts_per_s, Some(10_000.0));
        assert_eq!(w0.etcd_slow_watchers, Some(0.0));
        assert_eq!(w0.leader_cache_lag, Some(10.0));
        assert_eq!(w0.decision_watch_lag, Some(5));
        assert_eq!(w0.etcd_commit_ms, Some(5.0));
        assert_eq!(w0.etcd_compaction_batches, Some(0.0));
        // The second window reaches back to the last sample before it (5 s).
        assert_eq!(w1.etcd_puts_per_s, Some(65_000.0 / 10.0));
        assert_eq!(w1.etcd_slow_watchers, Some(1.0));
        assert_eq!(w1.leader_cache_lag, Some(9_000.0));
        assert_eq!(w1.etcd_commit_ms, Some(20.0));
        assert_eq!(w1.etcd_compaction_batches, Some(400.0));
    }

    #[test]
    fn a_run_shorter_than_a_window_has_no_windows_and_no_slow_mode() {
        let start = Instant::now();
        let decided = vec![Duration::from_millis(300), Duration::from_millis(2_500)];
        let t = windows(start, Duration::ZERO, &decided, &[]);
        assert!(t.windows.is_empty());
        assert_eq!(t.median_per_s, None);
        assert_eq!(t.slowest_over_median, None);
        assert!(!t.slow_mode);
    }
}
