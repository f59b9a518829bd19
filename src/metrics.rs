//! The replica's Prometheus metrics: one [`Metrics`] per replica, shared as `Arc<Metrics>`,
//! owning its registry.
//!
//! What happens is pushed: the manager, the runner and the controller call one small method
//! where a transaction commits, a health contact ends, a launch returns or leadership changes.
//! What the cache *holds* (the queue, each engine's capacity and reservations, how far behind
//! etcd it is) is read when scraped, by a collector: nothing is kept in step by hand, and a
//! scrape never shows a copy older than the cache.
//!
//! Every name starts with `citadel_`; docs/monitoring.md ("Metrics") lists them.
//!
//! It may not read etcd or take the cache's lock for longer than one scrape's read.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::cache::{Backlog, Cache, Read, Standing};
use crate::model::Status;
use crate::store::StoreError;
use crate::store::fence::Commit;

/// One label: its name and value.
type Label = [(&'static str, String); 1];

/// MB, as citadel counts memory (MiB, as Docker rounds it), in bytes: Prometheus's base unit.
const MB: f64 = 1024.0 * 1024.0;

/// What an etcd probe last found (see `http::probe_etcd`).
#[derive(Debug, Clone, Default)]
pub struct EtcdSeen {
    /// When etcd last answered a probe.
    pub last_ok: Option<Instant>,
    /// etcd's revision in that answer's header.
    pub revision: i64,
    /// Why the newest probe failed, if it did.
    pub error: Option<String>,
}

/// What the collector reads at scrape time, shared with it.
#[derive(Default)]
struct Sources {
    /// The replica's cache, once it has one.
    cache: Mutex<Option<Arc<Cache>>>,
    etcd: Mutex<EtcdSeen>,
    /// `citadel_leader`'s value (one gauge, shared): the queue a scrape reports hangs on it.
    leader: Gauge,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources")
            .field("etcd", &*locked(&self.etcd))
            .finish_non_exhaustive()
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each value is replaced whole: a panic elsewhere leaves nothing torn.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Metrics {
    registry: Registry,
    decisions: Family<Label, Counter>,
    releases: Counter,
    preemptions: Counter,
    planned: Counter,
    placements: Family<Label, Counter>,
    decision_latency: Histogram,
    commit_latency: Histogram,
    transactions: Family<Label, Counter>,
    transaction_ops: Histogram,
    leader: Gauge,
    leadership_changes: Counter,
    health_contacts: Family<Label, Counter>,
    launches: Family<Label, Counter>,
    sources: Arc<Sources>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("leader", &self.leader.get())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        // Latencies from 1 ms to about 65 s; operations per transaction up to etcd's largest.
        let seconds = || Histogram::new(exponential_buckets(0.001, 2.0, 17));
        let sources = Arc::new(Sources::default());
        let m = Metrics {
            registry: Registry::default(),
            decisions: Family::default(),
            releases: Counter::default(),
            preemptions: Counter::default(),
            planned: Counter::default(),
            placements: Family::default(),
            decision_latency: seconds(),
            commit_latency: seconds(),
            transactions: Family::default(),
            transaction_ops: Histogram::new(exponential_buckets(1.0, 2.0, 17)),
            leader: sources.leader.clone(),
            leadership_changes: Counter::default(),
            health_contacts: Family::default(),
            launches: Family::default(),
            sources,
        };
        let mut registry = Registry::default();
        registry.register(
            "citadel_decisions",
            "Decisions written, by status (the leader's placements and refusals, repairs, and the runner's status changes)",
            m.decisions.clone(),
        );
        registry.register(
            "citadel_releases",
            "Decisions the leader deleted (their request was deleted or changed)",
            m.releases.clone(),
        );
        registry.register(
            "citadel_preemptions",
            "Placements evicted to make room for a request of higher priority",
            m.preemptions.clone(),
        );
        registry.register(
            "citadel_planned_requests",
            "Requests the leader planned a decision for (the same one again when it is retried): an idle cluster's count stands still",
            m.planned.clone(),
        );
        registry.register(
            "citadel_placements",
            "Placements committed, by scheduling strategy",
            m.placements.clone(),
        );
        registry.register(
            "citadel_decision_latency_seconds",
            "From the cache seeing a request revision to the leader's commit of its decision",
            m.decision_latency.clone(),
        );
        registry.register(
            "citadel_commit_latency_seconds",
            "Time etcd took to answer one of the leader's transactions",
            m.commit_latency.clone(),
        );
        registry.register(
            "citadel_transactions",
            "The leader's decision transactions, by outcome (committed, conflict, fenced, failed)",
            m.transactions.clone(),
        );
        registry.register(
            "citadel_transaction_operations",
            "Operations (writes and deletes) per committed transaction",
            m.transaction_ops.clone(),
        );
        registry.register(
            "citadel_leader",
            "1 while this replica leads, else 0",
            m.leader.clone(),
        );
        registry.register(
            "citadel_leadership_changes",
            "Times this replica started or stopped leading",
            m.leadership_changes.clone(),
        );
        registry.register(
            "citadel_health_contacts",
            "The runner's contacts with an engine's Docker API, by result (ok, failed)",
            m.health_contacts.clone(),
        );
        registry.register(
            "citadel_launches",
            "Container launches, by outcome (started, failed_to_start, engine_unreachable)",
            m.launches.clone(),
        );
        registry.register_collector(Box::new(CacheCollector(m.sources.clone())));
        Metrics { registry, ..m }
    }

    /// Reads `cache` when scraped (the replica's own; a new one replaces the old).
    pub fn observe(&self, cache: &Arc<Cache>) {
        *locked(&self.sources.cache) = Some(cache.clone());
    }

    /// Every metric, in Prometheus's text format (0.0.4).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The `Content-Type` of [`Metrics::encode`]'s text.
    pub const CONTENT_TYPE: &'static str =
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

    // ---- the manager ----

    /// One transaction of the leader's came back (or failed): its outcome, how long etcd took,
    /// and for a commit, how many operations it held.
    pub fn transaction(&self, result: &Result<Commit, StoreError>, ops: usize, took: Duration) {
        let outcome = match result {
            Ok(Commit::Done(_)) => "committed",
            Ok(Commit::Conflict(_)) => "conflict",
            Ok(Commit::Fenced) => "fenced",
            Err(_) => "failed",
        };
        self.transactions
            .get_or_create(&[("outcome", outcome.into())])
            .inc();
        if result.is_ok() {
            // A failed call's time is the timeout's, not etcd's.
            self.commit_latency.observe(took.as_secs_f64());
        }
        if matches!(result, Ok(Commit::Done(_))) {
            self.transaction_ops.observe(ops as f64);
        }
    }

    /// A release committed (a decision deleted because its request went or changed).
    pub fn released(&self) {
        self.releases.inc();
    }

    /// A placement evicted by a request of higher priority, committed.
    pub fn preempted(&self) {
        self.preemptions.inc();
    }

    /// The leader planned `n` more requests.
    pub fn planned(&self, n: usize) {
        self.planned.inc_by(n as u64);
    }

    /// How many requests the leader has planned a decision for, retries included.
    pub fn planned_total(&self) -> u64 {
        self.planned.get()
    }

    /// A placement committed by `scheduler`.
    pub fn placed(&self, scheduler: &str) {
        self.placements
            .get_or_create(&[("scheduler", scheduler.to_string())])
            .inc();
    }

    /// A request revision's first decision, `waited` after the cache saw it.
    pub fn decision_waited(&self, waited: std::time::Duration) {
        self.decision_latency.observe(waited.as_secs_f64());
    }

    /// A decision written with `status`.
    pub fn decided(&self, status: Status) {
        self.decisions
            .get_or_create(&[("status", status.to_string())])
            .inc();
    }

    // ---- the controller ----

    /// This replica leads (or no longer does).
    pub fn set_leader(&self, leads: bool) {
        let now = i64::from(leads);
        if self.leader.set(now) != now {
            self.leadership_changes.inc();
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    // ---- the runner ----

    /// One contact with an engine's Docker API (usage and container list) ended.
    pub fn health_contact(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.health_contacts
            .get_or_create(&[("result", result.into())])
            .inc();
    }

    /// A launch returned: `started`, `failed_to_start` (tried elsewhere) or
    /// `engine_unreachable` (tried again later).
    pub fn launch(&self, outcome: &'static str) {
        self.launches
            .get_or_create(&[("outcome", outcome.into())])
            .inc();
    }

    // ---- the etcd probe ----

    /// etcd answered a probe; its header said `revision`.
    pub fn etcd_answered(&self, revision: i64) {
        let mut seen = locked(&self.sources.etcd);
        seen.last_ok = Some(Instant::now());
        seen.revision = seen.revision.max(revision);
        seen.error = None;
    }

    /// A probe failed.
    pub fn etcd_failed(&self, error: String) {
        locked(&self.sources.etcd).error = Some(error);
    }

    pub fn etcd_seen(&self) -> EtcdSeen {
        locked(&self.sources.etcd).clone()
    }

    /// The cache's lag in revisions: etcd's newest revision as last seen in a response header
    /// (a probe's, a list's or a watch response's) minus the revision the cache has applied.
    /// Writes outside the prefix (an etcd shared with others) count until the next write
    /// under it.
    pub fn cache_lag(&self, cache: &Cache) -> i64 {
        let head = cache
            .progress()
            .followed()
            .head
            .max(self.etcd_seen().revision);
        (head - cache.revision()).max(0)
    }
}

/// The leader's backlog, as every replica reports it (`citadel_queued_requests` and
/// `citadel_parked_requests`, and the status page), so that one alert rule holds for all.
///
/// The leader reports its own books. A standby's books are its own view, in which every
/// request that another replica refused is due one more try once it leads (it has parked none
/// yet): reported as they stand, a standby's queue would count the leader's parked requests.
/// So a standby reports what etcd shows waiting for the leader: requests with no decision on
/// their current revision, and decisions whose request is gone; and as parked, the requests
/// refused for want of room or waiting for the rest of their gang.
pub fn backlog(state: &Read<'_>, leads: bool, counts: &[(Standing, usize)]) -> Backlog {
    if leads {
        return state.backlog();
    }
    let count = |wanted: &[Standing]| -> usize {
        counts
            .iter()
            .filter(|(s, _)| wanted.contains(s))
            .map(|(_, n)| n)
            .sum()
    };
    let released = state.orphaned_decisions();
    Backlog {
        queued: count(&[Standing::Queued]) + released,
        parked: count(&[
            Standing::Decided(Status::Unschedulable),
            Standing::Decided(Status::Pending),
        ]),
    }
}

/// Reads the cache at scrape time: queue, requests, engines, revisions.
#[derive(Debug)]
struct CacheCollector(Arc<Sources>);

/// What a scrape reads of the cache, copied under its lock and encoded after it: a scrape
/// holds up the cache only to copy.
struct Scraped {
    backlog: Backlog,
    counts: Vec<(Standing, usize)>,
    /// Per valid engine: cpus, reserved cpus, memory and reserved memory in bytes.
    engines: Vec<(String, [f64; 4])>,
}

impl Scraped {
    fn of(cache: &Cache, leads: bool) -> Self {
        let state = cache.read();
        let engines = state
            .engine_rows()
            .into_iter()
            .filter(|(_, _, invalid)| invalid.is_none())
            .map(|(e, _, _)| {
                let values = [
                    e.cpus,
                    e.reserved_cpus,
                    e.memory * MB,
                    e.reserved_memory * MB,
                ];
                (e.id, values)
            })
            .collect();
        let counts = state.request_counts();
        Scraped {
            backlog: backlog(&state, leads, &counts),
            counts,
            engines,
        }
    }
}

/// The per-engine series, in the order of [`Scraped::engines`]' values.
const PER_ENGINE: [(&str, &str); 4] = [
    (
        "citadel_engine_cpus",
        "An engine's cpus, as registered (before --overcommit).",
    ),
    (
        "citadel_engine_reserved_cpus",
        "Cpus the placements on an engine reserve.",
    ),
    (
        "citadel_engine_memory_bytes",
        "An engine's memory, as registered (before --overcommit).",
    ),
    (
        "citadel_engine_reserved_memory_bytes",
        "Memory the placements on an engine reserve.",
    ),
];

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(cache) = locked(&self.0.cache).clone() else {
            return Ok(());
        };
        let etcd_revision = locked(&self.0.etcd).revision;
        let scraped = Scraped::of(&cache, self.0.leader.get() == 1);
        encode_work(&mut encoder, &scraped)?;
        encode_revisions(&mut encoder, &cache, etcd_revision)?;
        for (i, (name, help)) in PER_ENGINE.into_iter().enumerate() {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (engine, values) in &scraped.engines {
                ConstGauge::new(values[i])
                    .encode(m.encode_family(&[("engine", engine.as_str())])?)?;
            }
        }
        Ok(())
    }
}

/// The leader's queue and where requests stand.
fn encode_work(encoder: &mut DescriptorEncoder, scraped: &Scraped) -> fmt::Result {
    gauge(
        encoder,
        "citadel_queued_requests",
        "Requests waiting for the leader: new or changed requests to decide, and decisions to release (a standby reports what etcd shows the leader has to do).",
        scraped.backlog.queued as i64,
    )?;
    gauge(
        encoder,
        "citadel_parked_requests",
        "Unschedulable requests parked until an engine gains room that could fit them.",
        scraped.backlog.parked as i64,
    )?;
    let mut m = encoder.encode_descriptor(
        "citadel_requests",
        "Requests by the status of the decision on their current revision (queued: none yet).",
        None,
        MetricType::Gauge,
    )?;
    for (standing, n) in &scraped.counts {
        ConstGauge::new(*n as i64).encode(m.encode_family(&[("status", standing.name())])?)?;
    }
    Ok(())
}

/// How closely the cache follows etcd.
fn encode_revisions(
    encoder: &mut DescriptorEncoder,
    cache: &Cache,
    etcd_revision: i64,
) -> fmt::Result {
    let applied = cache.revision();
    let head = cache.progress().followed().head.max(etcd_revision);
    gauge(
        encoder,
        "citadel_cache_revision",
        "The etcd revision the cache has applied.",
        applied,
    )?;
    gauge(
        encoder,
        "citadel_etcd_revision",
        "etcd's newest revision, as last seen in a response header.",
        head,
    )?;
    gauge(
        encoder,
        "citadel_cache_lag_revisions",
        "etcd's revision minus the cache's (writes outside the prefix count until the next one under it).",
        (head - applied).max(0),
    )?;
    let m = encoder.encode_descriptor(
        "citadel_cache_lists",
        "Times the cache listed every key (its first load, and after a compacted watch).",
        None,
        MetricType::Counter,
    )?;
    ConstCounter::new(cache.lists()).encode(m)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> fmt::Result {
    let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counters_and_the_leader_gauge_show_in_the_text_format() {
        let m = Metrics::new();
        m.decided(Status::Placed);
        m.decided(Status::Placed);
        m.decided(Status::Unschedulable);
        m.set_leader(true);
        m.set_leader(true);
        m.set_leader(false);
        m.health_contact(false);
        m.launch("started");
        m.transaction(&Ok(Commit::Done(7)), 127, Duration::from_millis(3));
        m.transaction(&Ok(Commit::Conflict(8)), 3, Duration::from_millis(2));
        let text = m.encode().expect("encodes");
        let v = |s| value(&text, s);
        assert_eq!(v("citadel_decisions_total{status=\"placed\"}"), Some(2.0));
        assert_eq!(
            v("citadel_decisions_total{status=\"unschedulable\"}"),
            Some(1.0)
        );
        assert_eq!(v("citadel_leader"), Some(0.0));
        assert_eq!(v("citadel_leadership_changes_total"), Some(2.0));
        assert_eq!(
            v("citadel_health_contacts_total{result=\"failed\"}"),
            Some(1.0)
        );
        assert_eq!(v("citadel_launches_total{outcome=\"started\"}"), Some(1.0));
        assert_eq!(
            v("citadel_transactions_total{outcome=\"committed\"}"),
            Some(1.0)
        );
        assert_eq!(v("citadel_transaction_operations_count"), Some(1.0));
        assert_eq!(v("citadel_commit_latency_seconds_count"), Some(2.0));
        assert!(text.contains("# TYPE citadel_decision_latency_seconds histogram"));
        assert!(
            !text.contains("citadel_queued_requests"),
            "no cache yet: nothing to read"
        );
    }

    #[test]
    fn the_cache_is_read_when_scraped() {
        let m = Metrics::new();
        let cache = Cache::new(Keys::default(), 1.0);
        m.observe(&cache);
        let text = m.encode().expect("encodes");
        assert_eq!(value(&text, "citadel_queued_requests"), Some(0.0));
        assert_eq!(value(&text, "citadel_parked_requests"), Some(0.0));
        assert_eq!(
            value(&text, "citadel_requests{status=\"unschedulable\"}"),
            Some(0.0)
        );
        assert_eq!(value(&text, "citadel_cache_lists_total"), Some(0.0));
        assert_eq!(value(&text, "citadel_cache_lag_revisions"), Some(0.0));
        m.etcd_answered(12);
        assert_eq!(m.cache_lag(&cache), 12);
    }
}
