//! Chaos on a real 3-member etcd cluster under steady load, with three real replicas: the raft
//! leader member SIGKILLed and restarted, then frozen (SIGSTOP) and resumed, the citadel leader
//! SIGKILLed, the citadel leader
//! SIGSTOPped past its lease TTL then resumed, compaction every second, and two of three members
//! stopped (quorum lost) then brought back.
//!
//! It asserts what must hold, never a time: afterwards `citadel check` finds nothing, every live
//! request has exactly one decision for its current revision, and the citadel leader changed
//! only in the two phases aimed at it. Figures (decision gap, p99, commit failures per phase)
//! are printed: `cargo test --release --test chaos -- --nocapture`. `CITADEL_TEST_BIN=…` runs
//! the replicas of another build under the same chaos, to compare.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use citadel::keys::Keys;
use citadel::model::Decision;
use citadel::store::{self, EtcdConfig};
use citadel_testkit::child::Signal;
use citadel_testkit::etcd::EtcdCluster;
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod common;
use common::ReplicaProcess;

const LEASE_TTL: &str = "3";

/// What happened, with when, as seen from outside the replicas.
#[derive(Default)]
struct Seen {
    /// Request id and revision → when its put returned.
    put: BTreeMap<(String, i64), Instant>,
    /// Decision arrivals: when, and for which request revision.
    decided: Vec<(Instant, String, i64)>,
    /// Leader changes: when, and to whom.
    leaders: Vec<(Instant, String)>,
}

type Shared = Arc<Mutex<Seen>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// A client that rides out member loss as citadel's own do: supervised, so that calls stay
/// off members that stop answering.
async fn client(endpoints: &[String], stop: &tokio::sync::watch::Receiver<bool>) -> Client {
    let cfg = EtcdConfig::new(endpoints.to_vec());
    let c = store::connect(&cfg, None)
        .await
        .expect("connect to the cluster");
    tokio::spawn(store::endpoints::supervise(c.clone(), cfg, stop.clone()));
    c
}

/// Steady load for `run`: a request every 25 ms, every 6th rewritten and every 9th deleted a
/// little later. A put that fails (no quorum, a member dying) is retried until it lands: a
/// user's put that etcd refused was never accepted. Returns each live request's revision.
///
/// A put that timed out may still be queued in etcd and land later (once quorum is back),
/// even after the delete that followed it: the test then finds a request it thought gone.
/// Such a late put is the user's write all the same, and must be decided like any other
/// (see [`Chaos::every_live_request_has_one_decision`]).
async fn load(client: Client, seen: Shared, run: Duration) -> BTreeMap<String, i64> {
    let keys = Keys::default();
    let mut live = BTreeMap::new();
    let started = Instant::now();
    let mut i = 0usize;
    while started.elapsed() < run {
        let id = format!("load-{i:05}");
        let body = request(i);
        let rev = put_until_landed(&client, &keys.request(&common::rid(&id)), &body).await;
        lock(&seen).put.insert((id.clone(), rev), Instant::now());
        live.insert(id, rev);
        if i >= 2 && (i - 2).is_multiple_of(6) {
            let again = format!("load-{:05}", i - 2);
            if let Some(slot) = live.get_mut(&again) {
                let key = keys.request(&common::rid(&again));
                *slot = put_until_landed(&client, &key, &request(i + 1)).await;
                lock(&seen).put.insert((again, *slot), Instant::now());
            }
        }
        if i >= 4 && (i - 4).is_multiple_of(9) {
            let gone = format!("load-{:05}", i - 4);
            loop {
                let mut kv = client.kv_client();
                let del = kv.delete(keys.request(&common::rid(&gone)), None);
                if matches!(
                    tokio::time::timeout(Duration::from_secs(2), del).await,
                    Ok(Ok(_))
                ) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            live.remove(&gone);
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    live
}

async fn put_until_landed(client: &Client, key: &str, body: &str) -> i64 {
    loop {
        let mut kv = client.kv_client();
        let put = kv.put(key, body, None);
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), put).await {
            return r.header().map_or(0, |h| h.revision());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `i`th request of the load: small, some batch.
fn request(i: usize) -> String {
    let cpus = [0.05, 0.1, 0.2][i % 3];
    let kind = if i.is_multiple_of(4) {
        "batch"
    } else {
        "service"
    };
    common::request_json(
        cpus,
        16,
        serde_json::json!({"image": format!("busybox:{i}"), "type": kind}),
    )
}

/// Records every decision as it arrives, resuming the watch whenever it breaks.
async fn watch_decisions(client: Client, seen: Shared) {
    let keys = Keys::default();
    let mut from = 0i64;
    loop {
        let opts = WatchOptions::new().with_prefix();
        let opts = if from > 0 {
            opts.with_start_revision(from)
        } else {
            opts
        };
        let Ok(mut stream) = client
            .watch_client()
            .watch(keys.decisions(), Some(opts))
            .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        // As the cache does: a stream on a frozen member says nothing; ask, then give up.
        let mut asked = false;
        loop {
            let resp = match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
                Ok(Ok(Some(resp))) => resp,
                Err(_) if !asked => {
                    asked = true;
                    if stream.request_progress().await.is_err() {
                        break;
                    }
                    continue;
                }
                _ => break,
            };
            asked = false;
            if resp.compact_revision() > 0 {
                from = resp.compact_revision();
                break;
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                from = from.max(kv.mod_revision() + 1);
                if ev.event_type() != EventType::Put {
                    continue;
                }
                if let Ok(d) = serde_json::from_slice::<Decision>(kv.value()) {
                    let id = String::from_utf8_lossy(kv.key())
                        .trim_start_matches(keys.decisions().as_str())
                        .to_string();
                    lock(&seen)
                        .decided
                        .push((Instant::now(), id, d.request_revision));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls who leads (the lowest election key) and records every change.
async fn watch_leader(client: Client, seen: Shared) {
    let keys = Keys::default();
    loop {
        if let Some(id) = common::leader_id(&client, &keys).await {
            let mut s = lock(&seen);
            if s.leaders.last().is_none_or(|(_, last)| *last != id) {
                s.leaders.push((Instant::now(), id));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One phase's figures.
fn report(name: &str, seen: &Seen, from: Instant, to: Instant, failures: usize) {
    let arrivals: Vec<Instant> = seen
        .decided
        .iter()
        .map(|(t, _, _)| *t)
        .filter(|t| *t >= from && *t < to)
        .collect();
    let mut gap = Duration::ZERO;
    let mut last = from;
    for t in &arrivals {
        gap = gap.max(t.duration_since(last));
        last = *t;
    }
    gap = gap.max(to.duration_since(last));
    let mut lat: Vec<f64> = seen
        .decided
        .iter()
        .filter(|(t, _, _)| *t >= from && *t < to)
        .filter_map(|(t, id, rev)| {
            let put = seen.put.get(&(id.clone(), *rev))?;
            Some(t.saturating_duration_since(*put).as_secs_f64() * 1e3)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let changes = seen
        .leaders
        .iter()
        .skip(1)
        .filter(|(t, _)| *t >= from && *t < to)
        .count();
    println!(
        "chaos {name:<28} decisions {:>5}  gap {:>6.0} ms  p50 {:>6.1} ms  p99 {:>7.1} ms  commit failures {failures:>4}  leader changes {changes}",
        arrivals.len(),
        gap.as_secs_f64() * 1e3,
        pct(0.5),
        pct(0.99),
    );
}

/// Commits that failed, as every replica (the ones killed too) logged them.
fn commit_failures(replicas: &[ReplicaProcess]) -> usize {
    replicas
        .iter()
        .map(|r| r.log().matches("commit failed").count())
        .sum()
}

/// One phase of the chaos: its name, when it ran, and the commits that failed meanwhile.
struct Phase {
    name: &'static str,
    from: Instant,
    to: Instant,
    /// The same span on the clock the replicas' logs are stamped with.
    wall: (SystemTime, SystemTime),
    failures: usize,
}

/// The world under chaos: a 3-member cluster, three replicas (the real binary), a steady load,
/// and watchers recording what happens. Fields drop in order: the replicas, their logs, the
/// cluster.
struct Chaos {
    replicas: Vec<ReplicaProcess>,
    /// The replicas' logs.
    _dir: TempDir,
    cluster: EtcdCluster,
    endpoints: Vec<String>,
    admin: Client,
    keys: Keys,
    seen: Shared,
    phases: Vec<Phase>,
    loader: Option<JoinHandle<BTreeMap<String, i64>>>,
    watchers: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

/// A moment for the cluster to settle after each fault.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(3)).await;
}

impl Chaos {
    /// The cluster, 10 engines, three replicas, the watchers and a load of 65 s; returns once
    /// a citadel leader leads.
    async fn start() -> Chaos {
        common::init_tracing();
        let cluster = EtcdCluster::start(3).await.expect("start 3 members");
        let endpoints = cluster.endpoints();
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = Keys::default();
        let (stop, stopped) = watch::channel(false);
        let admin = client(&endpoints, &stopped).await;
        for i in 0..10 {
            common::put_engine(&admin, &keys, &format!("e{i}"), 8.0, 8192.0, &[]).await;
        }
        let replicas = (1..=3)
            .map(|i| {
                ReplicaProcess::start(
                    &endpoints.join(","),
                    &format!("replica-{i}"),
                    dir.path(),
                    &["--lease-ttl", LEASE_TTL, "--compact-every", "0"],
                )
            })
            .collect();
        let seen: Shared = Arc::default();
        let watchers = vec![
            tokio::spawn(watch_decisions(
                client(&endpoints, &stopped).await,
                seen.clone(),
            )),
            tokio::spawn(watch_leader(
                client(&endpoints, &stopped).await,
                seen.clone(),
            )),
        ];
        let loader = tokio::spawn(load(
            client(&endpoints, &stopped).await,
            seen.clone(),
            Duration::from_secs(65),
        ));
        common::wait_until("a citadel leader", common::WAIT, || async {
            !lock(&seen).leaders.is_empty()
        })
        .await;
        Chaos {
            replicas,
            _dir: dir,
            cluster,
            endpoints,
            admin,
            keys,
            seen,
            phases: Vec::new(),
            loader: Some(loader),
            watchers,
            stop,
        }
    }

    /// When a phase begins, and how many commits had failed by then.
    fn begin(&self) -> (Instant, SystemTime, usize) {
        (
            Instant::now(),
            SystemTime::now(),
            commit_failures(&self.replicas),
        )
    }

    /// Records phase `name`, begun at `begun`, as ending now.
    fn end(&mut self, name: &'static str, begun: (Instant, SystemTime, usize)) {
        let (from, wall_from, before) = begun;
        self.phases.push(Phase {
            name,
            from,
            to: Instant::now(),
            wall: (wall_from, SystemTime::now()),
            failures: commit_failures(&self.replicas).saturating_sub(before),
        });
    }

    /// Whether etcd itself took the citadel leader's lease during `phase`: a replica logged
    /// that its election key was deleted or that etcd said its lease expired, and none that it
    /// gave up on a lease etcd had not answered about.
    ///
    /// etcd 3.4 before 3.4.28 revokes live leases when a stalled raft leader resumes: its
    /// lessor still acts as the primary after its raft node has stepped down, and the
    /// revocations it proposes are forwarded to the new leader and commit (etcd issues #12528
    /// and #15247, fixed by #16822). Freezing the raft leader is how this test stalls it.
    fn etcd_took_the_lease(&self, phase: &Phase) -> bool {
        let within =
            |line: &str| log_time(line).is_some_and(|t| t >= phase.wall.0 && t <= phase.wall.1);
        let logs: Vec<String> = self
            .replicas
            .iter()
            .flat_map(|r| r.log().lines().map(plain).collect::<Vec<_>>())
            .collect();
        let lines = || logs.iter().filter(|l| within(l));
        let taken = lines().any(|l| {
            l.contains("stepped down reason=the election key is gone")
                || l.contains("lease lost: etcd says it expired")
        });
        let gave_up = lines().any(|l| l.contains("lease lost: no etcd member has answered"));
        taken && !gave_up
    }

    async fn steady(&mut self) {
        let begun = self.begin();
        settle().await;
        self.end("steady", begun);
    }

    /// The raft leader member dies, then comes back.
    async fn kill_the_raft_leader_member_and_bring_it_back(&mut self) {
        let begun = self.begin();
        let raft = self.cluster.leader().await.expect("a raft leader");
        self.cluster.kill(raft).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        self.cluster
            .restart(raft, true)
            .await
            .expect("the member rejoins");
        settle().await;
        self.end("raft leader member killed", begun);
    }

    /// The raft leader member freezes (SIGSTOP), then wakes: it keeps its sockets.
    async fn freeze_the_raft_leader_member_and_wake_it(&mut self) {
        let begun = self.begin();
        let raft = self.cluster.leader().await.expect("a raft leader");
        self.cluster.pause(raft).expect("SIGSTOP the member");
        tokio::time::sleep(Duration::from_secs(5)).await;
        self.cluster.resume(raft).expect("SIGCONT the member");
        settle().await;
        self.end("raft leader member frozen", begun);
    }

    /// The replica that leads now.
    async fn citadel_leader(&self) -> usize {
        let leader = common::leader_id(&self.admin, &self.keys)
            .await
            .expect("a leader");
        self.replicas
            .iter()
            .position(|r| r.id == leader)
            .expect("a replica")
    }

    /// The citadel leader dies.
    async fn kill_the_citadel_leader(&mut self) {
        let begun = self.begin();
        let i = self.citadel_leader().await;
        self.replicas[i].signal(Signal::KILL);
        assert!(self.replicas[i].wait_exit(Duration::from_secs(5)));
        settle().await;
        settle().await;
        self.end("citadel leader killed", begun);
    }

    /// The citadel leader freezes past its TTL, then wakes.
    async fn pause_the_citadel_leader_past_its_ttl(&mut self) {
        let begun = self.begin();
        let i = self.citadel_leader().await;
        self.replicas[i].signal(Signal::STOP);
        tokio::time::sleep(Duration::from_secs(5)).await;
        self.replicas[i].signal(Signal::CONT);
        settle().await;
        self.end("citadel leader paused", begun);
    }

    /// Compaction every second.
    async fn compact_every_second(&mut self) {
        let begun = self.begin();
        for _ in 0..5 {
            if let Ok(r) = self.admin.kv_client().get("/", None).await
                && let Some(h) = r.header()
            {
                let _ = self.admin.kv_client().compact(h.revision(), None).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        self.end("compaction every second", begun);
    }

    /// Quorum lost: two of three members stop, then come back.
    async fn lose_quorum_and_regain_it(&mut self) {
        let begun = self.begin();
        let (a, b) = (0, 1);
        self.cluster.stop(a).await;
        self.cluster.stop(b).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        self.cluster.restart(a, false).await.expect("member a back");
        self.cluster
            .restart(b, true)
            .await
            .expect("member b back, quorum again");
        settle().await;
        self.end("quorum lost and regained", begun);
    }

    async fn after(&mut self) {
        let begun = self.begin();
        settle().await;
        settle().await;
        self.end("after", begun);
    }

    /// Waits (bounded) for the load to end; each live request's revision.
    async fn end_of_the_load(&mut self) -> BTreeMap<String, i64> {
        let loader = self.loader.take().expect("the load runs");
        tokio::time::timeout(Duration::from_secs(90), loader)
            .await
            .expect("the load ends")
            .expect("the load task")
    }

    /// `citadel check`, letting the cluster settle: (exit code, stdout, stderr).
    fn citadel_check(&self) -> (i32, String, String) {
        common::cli(&self.endpoints.join(","), &["check", "--settle", "60"])
    }

    /// Prints each phase's figures; returns how many times the citadel leader changed in each.
    /// Each phase's leader changes, less those etcd forced on the raft leader's phases (see
    /// [`Chaos::etcd_took_the_lease`]), which are reported.
    fn print_phases_and_count_leader_changes(&self) -> Vec<(&'static str, usize)> {
        let seen = lock(&self.seen);
        for p in &self.phases {
            report(p.name, &seen, p.from, p.to, p.failures);
        }
        self.phases
            .iter()
            .map(|p| {
                let n = seen
                    .leaders
                    .iter()
                    .skip(1)
                    .filter(|(t, _)| *t >= p.from && *t < p.to)
                    .count();
                if n > 0 && p.name.starts_with("raft leader") && self.etcd_took_the_lease(p) {
                    println!(
                        "chaos: during \"{}\" etcd revoked the citadel leader's lease as its stalled raft leader resumed (etcd #12528): {n} change(s) not citadel's doing",
                        p.name
                    );
                    return (p.name, 0);
                }
                (p.name, n)
            })
            .collect()
    }

    fn stop_watching(&self) {
        for w in &self.watchers {
            w.abort();
        }
        self.stop.send_replace(true);
    }

    /// No violation nor unsettled request (every request in etcd has its one decision), every
    /// live request is there at a revision no older than the load wrote, and any other is a
    /// put of the load's that timed out and landed after the delete that followed it.
    async fn every_live_request_has_one_decision(&self, live: &BTreeMap<String, i64>) {
        let report = citadel::invariants::check_etcd(&self.admin, &self.keys, 1.0)
            .await
            .expect("read etcd");
        assert_eq!(report.violations() + report.unsettled(), 0, "{report:#?}");
        let held: BTreeMap<String, i64> = self
            .admin
            .kv_client()
            .get(self.keys.requests(), Some(GetOptions::new().with_prefix()))
            .await
            .expect("read the requests")
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let id = key.trim_start_matches(&self.keys.requests()).to_string();
                (id, kv.mod_revision())
            })
            .collect();
        for (id, rev) in live {
            let at = held.get(id).copied();
            assert!(
                at.is_some_and(|at| at >= *rev),
                "{id} (written at {rev}) is {at:?} in etcd"
            );
        }
        let late: Vec<&String> = held.keys().filter(|id| !live.contains_key(*id)).collect();
        assert!(
            late.iter().all(|id| id.starts_with("load-")),
            "requests nobody wrote: {late:?}"
        );
        if !late.is_empty() {
            println!("chaos: puts that landed after the delete that followed them: {late:?}");
        }
    }

    /// What each replica logged about leases, step-downs and etcd members.
    fn print_what_the_replicas_logged(&self) {
        for r in &self.replicas {
            for line in r.log().lines().filter(|l| {
                l.contains("stepped down")
                    || l.contains("lease")
                    || l.contains("keep-alive")
                    || l.contains("etcd member")
            }) {
                println!("chaos {}: {line}", r.id);
            }
        }
    }
}

/// When a replica logged `line` (its first 27 characters: `2026-12-06T13:25:03.857096Z`).
fn log_time(line: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(line.get(..27)?).ok()
}

/// A log line without its terminal colours (`ESC [ … m`).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The citadel leader changed only in the phases aimed at it.
fn leader_changed_only_when_attacked(changes: &[(&str, usize)]) {
    for (name, n) in changes {
        let aimed = name.starts_with("citadel leader");
        assert!(
            aimed || *n == 0,
            "the citadel leader changed {n} time(s) during \"{name}\", which was not aimed at it"
        );
    }
}

/// The two tests of this file each run a 3-member etcd and freeze or kill members: run side by
/// side on two cores, each slows the other's members past their election timeouts. One at a
/// time, as a real cluster's members have their own cores.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_member_cluster_under_chaos_loses_nothing_and_changes_leader_only_when_attacked() {
    let _alone = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut c = Chaos::start().await;
    c.steady().await;
    c.kill_the_raft_leader_member_and_bring_it_back().await;
    c.freeze_the_raft_leader_member_and_wake_it().await;
    c.kill_the_citadel_leader().await;
    c.pause_the_citadel_leader_past_its_ttl().await;
    c.compact_every_second().await;
    c.lose_quorum_and_regain_it().await;
    c.after().await;

    let live = c.end_of_the_load().await;
    let (code, stdout, stderr) = c.citadel_check();
    let changes = c.print_phases_and_count_leader_changes();
    c.stop_watching();
    // CHAOS_LOG_DIR=DIR keeps every replica's whole log there, to read after a failure.
    if let Ok(dir) = std::env::var("CHAOS_LOG_DIR") {
        for r in &c.replicas {
            let _ = std::fs::write(format!("{dir}/{}.log", r.id), r.log());
        }
    }
    assert_eq!(code, 0, "citadel check:\n{stdout}{stderr}");
    c.every_live_request_has_one_decision(&live).await;
    c.print_what_the_replicas_logged();
    leader_changed_only_when_attacked(&changes);
}

/// A supervised client's calls leave a member that froze (SIGSTOP: its sockets stay open, it
/// answers nothing) and a member that died, and go back to them once they answer again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_leave_a_frozen_or_dead_member_and_come_back() {
    let _alone = ONE_CLUSTER_AT_A_TIME.lock().await;
    common::init_tracing();
    let mut cluster = EtcdCluster::start(3).await.expect("start 3 members");
    let endpoints = cluster.endpoints();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let c = client(&endpoints, &stopped).await;
    // Every one of a run of calls answers within a short bound.
    let all_answer = |c: Client| async move {
        for _ in 0..12 {
            let mut kv = c.kv_client();
            let get = kv.get("/probe", None);
            if !matches!(
                tokio::time::timeout(Duration::from_millis(800), get).await,
                Ok(Ok(_))
            ) {
                return false;
            }
        }
        true
    };
    for (what, i) in [("frozen", 0usize), ("killed", 1)] {
        if what == "frozen" {
            cluster.pause(i).expect("SIGSTOP");
        } else {
            cluster.kill(i).await;
        }
        common::wait_until(
            &format!("calls leave the {what} member"),
            common::WAIT,
            || all_answer(c.clone()),
        )
        .await;
        if what == "frozen" {
            cluster.resume(i).expect("SIGCONT");
        } else {
            cluster
                .restart(i, true)
                .await
                .expect("the member comes back");
        }
    }
    stop.send_replace(true);
}

/// What decides whether etcd took a leader's lease reads the replicas' log lines as they are.
#[test]
fn a_log_line_is_read_for_its_time_and_its_words() {
    let line = "\u{1b}[2m2026-12-06T13:25:03.857096Z\u{1b}[0m  WARN replica{id=replica-3}: citadel::controller: stepped down \u{1b}[3mreason\u{1b}[0m\u{1b}[2m=\u{1b}[0mthe election key is gone";
    let plain = plain(line);
    assert!(
        plain.contains("stepped down reason=the election key is gone"),
        "{plain}"
    );
    let at = log_time(&plain).expect("a time");
    let want = humantime::parse_rfc3339("2026-12-06T13:25:03.857096Z").expect("a time");
    assert_eq!(at, want);
    assert_eq!(log_time("not a log line"), None);
}
